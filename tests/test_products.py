"""Decoding raw products: every form a user has, pairing by PRODUCT_ID, and refusing bad input."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from junoproc.cli import main
from junoproc.errors import (
    CorruptProductError,
    JunoprocError,
    MissingMetadataError,
    MissingRawError,
    ProductError,
    ShapeMismatchError,
    UnsafeArchiveError,
    UnsupportedBitModeError,
)
from junoproc.products import (
    MAX_MEMBER_BYTES,
    Location,
    ProductEntry,
    decode_png,
    find_products,
    load,
    parse_metadata,
    png_header,
    summarize,
)

PJ44_RGB = "JNCE_2022229_44C00032_V01"
PJ43_CH4 = "JNCE_2022186_43M00081_V01"
SET_13544 = Path("perijove44/13544-ImageSet")
RAW_13544 = SET_13544 / f"ImageSet/{PJ44_RGB}-raw.png"
JSON_13544 = SET_13544 / "DataSet/13544-Metadata.json"


# ----------------------------------------------------------------------------- helpers

def png_bytes(width: int, height: int, *, depth: int = 8, colour: int = 0,
              rows: bytes | None = None) -> bytes:
    """A minimal valid PNG with the IHDR we want (image data of the declared size unless ``rows``)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    if rows is None:
        rows = b"".join(b"\x00" + bytes(width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def write_product(folder: Path, label: dict, pixels_png: bytes, *,
                  json_name: str = "1-Metadata.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / json_name).write_text(json.dumps(label))
    raw = folder / label["FILE_NAME"]
    raw.write_bytes(pixels_png)
    return raw


def synthetic_label(lines: int = 384, filters=("BLUE", "GREEN", "RED"), **changes) -> dict:
    label = {
        "PRODUCT_ID": "JNCE_2022229_44C99999_V01", "FILE_NAME": "JNCE_2022229_44C99999_V01-raw.png",
        "TARGET_NAME": "JUPITER", "START_TIME": "2022-08-17T13:44:55.688",
        "STOP_TIME": "2022-08-17T13:45:03.894",
        "INTERFRAME_DELAY": "0.373 <s>", "EXPOSURE_DURATION": "3.200000 <ms>", "JNO:TDI_STAGES_COUNT": 1,
        "FILTER_NAME": list(filters), "SAMPLE_BIT_MODE_ID": "SQROOT", "SAMPLING_FACTOR": 1, "LINES": lines,
        "LINE_SAMPLES": 1648, "PJ": "44", "SOLAR_DISTANCE": "7.4172e+08 <km>",
    }
    label.update(changes)
    return label


def grey_png(lines: int, samples: int = 1648, value: int = 30) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((lines, samples), value, np.uint8))
    assert ok
    return buf.tobytes()


def run_info(path: Path):
    return CliRunner().invoke(main, ["info", str(path)])


def assert_one_line_cli_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("junoproc: error: ")
    for needle in needles:
        assert needle in lines[0]


# ----------------------------------------------------------------------------- real data

@pytest.mark.parametrize(("relative", "product_id", "filters", "frames"), [
    (SET_13544, PJ44_RGB, ("BLUE", "GREEN", "RED"), 22),
    (RAW_13544, PJ44_RGB, ("BLUE", "GREEN", "RED"), 22),
    (JSON_13544, PJ44_RGB, ("BLUE", "GREEN", "RED"), 22),
    (Path("perijove44/13541-ImageSet"), "JNCE_2022229_44C00029_V01", ("BLUE", "GREEN", "RED"), 18),
    (Path("perijove43/13537-ImageSet"), "JNCE_2022186_43C00078_V01", ("BLUE", "GREEN", "RED"), 12),
    (Path("perijove43/13540-ImageSet.zip"), PJ43_CH4, ("METHANE",), 12),
    (Path("perijove43/13540-Data.zip"), PJ43_CH4, ("METHANE",), 12),
    (Path("perijove44/13552-ImageSet.zip"), "JNCE_2022229_44M00040_V01", ("METHANE",), 36),
])
def test_every_real_product_loads(data_dir, relative, product_id, filters, frames):
    raw = load(data_dir / relative)
    assert raw.meta.product_id == product_id
    assert raw.meta.filters == filters
    assert raw.meta.n_frames == frames
    assert raw.pixels.dtype == np.uint8
    assert raw.pixels.shape == (frames * len(filters) * 128, 1648)
    assert raw.framelets.shape == (frames, len(filters), 128, 1648)
    assert raw.meta.bit_mode == "SQROOT"
    assert 7.4e8 < raw.meta.solar_distance_km < 7.5e8


def test_pairs_by_product_id_not_numeric_id(data_dir):
    """13540-Data.zip holds DataSet/13415-Metadata.json: paired by FILE_NAME, not by 13540."""
    raw = load(data_dir / "perijove43/13540-ImageSet.zip")
    assert raw.meta.metadata_path.endswith("13540-Data.zip!DataSet/13415-Metadata.json")
    assert raw.raw_path.endswith(f"13540-ImageSet.zip!ImageSet/{PJ43_CH4}-raw.png")
    assert raw.meta.exposure_ms == pytest.approx(102.4)
    assert raw.meta.tdi_stages == 32
    assert raw.meta.solar_distance_km == pytest.approx(7.4237e8)


def test_zip_and_folder_forms_give_identical_pixels(data_dir, tmp_path):
    """The zipped and unzipped forms of one image set decode to the same bytes."""
    from_zip = load(data_dir / "perijove43/13540-ImageSet.zip")
    unzipped = tmp_path / "deep" / "er" / "13540"
    for name in ("13540-ImageSet.zip", "13540-Data.zip"):
        with zipfile.ZipFile(data_dir / "perijove43" / name) as zf:
            zf.extractall(unzipped)
    from_folder = load(unzipped)
    assert np.array_equal(from_zip.pixels, from_folder.pixels)
    assert from_folder.meta == from_zip.meta.__class__(**{**from_zip.meta.__dict__,
                                                          "metadata_path": from_folder.meta.metadata_path})


def test_half_unzipped_set_finds_its_data_zip(data_dir, tmp_path):
    """ImageSet unzipped into a folder, Data.zip left beside it: the raw PNG finds its metadata."""
    with zipfile.ZipFile(data_dir / "perijove43/13540-ImageSet.zip") as zf:
        zf.extractall(tmp_path / "13540-ImageSet")
    shutil.copy(data_dir / "perijove43/13540-Data.zip", tmp_path)
    raw = load(tmp_path / f"13540-ImageSet/ImageSet/{PJ43_CH4}-raw.png")
    assert raw.meta.product_id == PJ43_CH4
    assert "13540-Data.zip!" in raw.meta.metadata_path


def test_find_products_reports_what_is_missing(data_dir):
    entries = {e.product_id: e for e in find_products(data_dir)}
    assert all(e.problem is None for e in entries.values()), [e.problem for e in entries.values()]
    assert {pid for pid, e in entries.items() if e.complete} == {
        "JNCE_2022186_43C00078_V01", PJ43_CH4, "JNCE_2022229_44C00029_V01", PJ44_RGB,
        "JNCE_2022229_44M00040_V01"}
    assert entries["JNCE_2022229_44C00035_V01"].missing == "raw"
    assert entries["JNCE_2022229_44C00035_V01"].metadata == Location(
        str(data_dir / "perijove44/13547-Data.zip"), "DataSet/13547-Metadata.json")
    for pid in ("JNCE_2021246_36C00061_V01", "JNCE_2019360_24C00055_V01"):
        assert entries[pid].missing == "metadata"
        assert entries[pid].raw == Location(str(data_dir / f"no-metadata/{pid}-raw.png"))
    assert entries[PJ43_CH4].metadata.member == "DataSet/13415-Metadata.json"


def test_raw_without_metadata_is_a_one_line_error_naming_the_file(data_dir):
    with pytest.raises(MissingMetadataError) as err:
        load(data_dir / "no-metadata/JNCE_2021246_36C00061_V01-raw.png")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("JNCE_2021246_36C00061_V01-raw.png: no metadata (JNCE_2021246_36C00061_V01 needs")
    assert "Metadata.json" in text and "PDS3 .LBL" in text


def test_metadata_without_raw(data_dir):
    with pytest.raises(MissingRawError) as err:
        load(data_dir / "perijove44/13547-Data.zip")
    assert "JNCE_2022229_44C00035_V01" in str(err.value)
    assert "13547-Data.zip" in str(err.value)


def test_folder_of_several_products_asks_for_one(data_dir):
    with pytest.raises(ProductError, match="holds 2 products"):
        load(data_dir / "perijove43")


def test_cli_info_folder_lists_rows_and_missing(data_dir):
    result = run_info(data_dir)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "JNCE_2022229_44C00035_V01" in out and "raw missing" in out
    assert out.count("metadata missing") == 2
    assert "METHANE" in out and "102.4/32" in out and "3.2/1" in out
    assert "8 product(s): 5 complete, 3 incomplete, 0 unreadable" in out


def test_cli_info_single_files(data_dir):
    ok = run_info(data_dir / RAW_13544)
    assert ok.exit_code == 0 and PJ44_RGB in ok.stdout and "BLUE,GREEN,RED" in ok.stdout
    assert_one_line_cli_error(run_info(data_dir / "no-metadata/JNCE_2021246_36C00061_V01-raw.png"),
                              "JNCE_2021246_36C00061_V01-raw.png: no metadata")
    assert_one_line_cli_error(run_info(data_dir / "perijove44/13547-Data.zip"), "without its raw image")


def test_summarize_metadata_only_row(data_dir, tmp_path):
    shutil.copy(data_dir / "perijove44/13547-Data.zip", tmp_path)
    (row,) = summarize(tmp_path)
    assert row.missing == "raw" and row.ok
    assert row.frames == 28 and row.exposure_ms == pytest.approx(6.4) and row.tdi_stages == 2


# ----------------------------------------------------------------------------- PDS3

def _pds3_label(meta_json: dict, img_name: str, *, sample_bits: int = 8, lines: int | None = None) -> str:
    filters = ", ".join(f'"{f}"' for f in meta_json["FILTER_NAME"])
    n_lines = meta_json["LINES"] if lines is None else lines
    return f"""PDS_VERSION_ID = PDS3
RECORD_TYPE = FIXED_LENGTH
RECORD_BYTES = 1648
FILE_RECORDS = {meta_json["LINES"]}
^IMAGE = ("{img_name}", 1)
PRODUCT_ID = "{meta_json["PRODUCT_ID"]}"
TARGET_NAME = {meta_json["TARGET_NAME"]}
START_TIME = {meta_json["START_TIME"]}
STOP_TIME = {meta_json["STOP_TIME"]}
SPACECRAFT_CLOCK_START_COUNT = "{meta_json["SPACECRAFT_CLOCK_START_COUNT"]}"
ORBIT_NUMBER = {meta_json["ORBIT_NUMBER"]}
INTERFRAME_DELAY = {meta_json["INTERFRAME_DELAY"].split()[0]} <s>
EXPOSURE_DURATION = {meta_json["EXPOSURE_DURATION"].split()[0]} <ms>
JNO:TDI_STAGES_COUNT = {meta_json["JNO:TDI_STAGES_COUNT"]}
FILTER_NAME = ({filters})
SOLAR_DISTANCE = 7.4237e+08 <km>
RATIONALE_DESC = "Jupiter imaging
  INS-61504_DISTORTION_Y = 311.48"
OBJECT = IMAGE
  LINES = {n_lines}
  LINE_SAMPLES = 1648
  SAMPLE_TYPE = UNSIGNED_INTEGER
  SAMPLE_BITS = {sample_bits}
  SAMPLE_BIT_MODE_ID = "SQROOT"
END_OBJECT = IMAGE
END
"""


@pytest.fixture()
def pds3_product(data_dir, tmp_path):
    """A PDS3 EDR (IMG + detached LBL) built from the real PJ43 methane product."""
    reference = load(data_dir / "perijove43/13540-ImageSet.zip")
    with zipfile.ZipFile(data_dir / "perijove43/13540-Data.zip") as zf:
        meta_json = json.loads(zf.read("DataSet/13415-Metadata.json"))
    folder = tmp_path / "pds"
    folder.mkdir()
    (folder / f"{PJ43_CH4}.IMG").write_bytes(reference.pixels.tobytes())
    (folder / f"{PJ43_CH4}.LBL").write_text(_pds3_label(meta_json, f"{PJ43_CH4}.IMG"))
    return folder, reference, meta_json


def test_pds3_img_and_lbl_load_like_the_site_product(pds3_product):
    folder, reference, _ = pds3_product
    for path in (folder / f"{PJ43_CH4}.IMG", folder / f"{PJ43_CH4}.LBL", folder):
        raw = load(path)
        assert np.array_equal(raw.pixels, reference.pixels)
        m, r = raw.meta, reference.meta
        assert (m.product_id, m.filters, m.lines, m.n_frames, m.tdi_stages, m.bit_mode) == (
            r.product_id, r.filters, r.lines, r.n_frames, r.tdi_stages, r.bit_mode)
        assert m.start_time_utc == r.start_time_utc == "2022-07-05T12:18:09.446"
        assert m.exposure_ms == pytest.approx(r.exposure_ms)
        assert m.interframe_delay_s == pytest.approx(r.interframe_delay_s)
        assert m.solar_distance_km == pytest.approx(7.4237e8)
        assert m.distortion_y_overrides == {"METHANE": 311.48}
    (entry,) = find_products(folder)
    assert entry.kind == "pds3" and entry.complete


def test_pds3_truncated_img_and_rdr_are_refused(pds3_product):
    folder, reference, meta_json = pds3_product
    img = folder / f"{PJ43_CH4}.IMG"
    img.write_bytes(reference.pixels.tobytes()[:-1000])
    with pytest.raises(CorruptProductError, match="IMG holds"):
        load(img)
    img.write_bytes(reference.pixels.tobytes())
    (folder / f"{PJ43_CH4}.LBL").write_text(_pds3_label(meta_json, img.name, sample_bits=16))
    with pytest.raises(CorruptProductError, match="SAMPLE_BITS = 16"):
        load(img)


def test_pds3_img_without_label(pds3_product):
    folder, _, _ = pds3_product
    (folder / f"{PJ43_CH4}.LBL").unlink()
    with pytest.raises(MissingMetadataError, match="PDS3 .LBL"):
        load(folder / f"{PJ43_CH4}.IMG")


# ----------------------------------------------------------------------------- bad input

def test_png_header_is_read_without_decoding():
    data = png_bytes(1648, 384)
    assert png_header(data) == (1648, 384, 8, 0)
    assert decode_png(data).shape == (384, 1648)


def test_png_bomb_is_refused_before_decoding(tmp_path):
    bomb = png_bytes(100000, 100000, rows=b"\x00" * 100)  # declares 10^10 pixels, holds nothing
    with pytest.raises(CorruptProductError, match="declares 100000 x 100000"):
        decode_png(bomb)
    write_product(tmp_path, synthetic_label(), bomb)
    with pytest.raises(CorruptProductError, match="decompression bomb"):
        load(tmp_path)
    assert_one_line_cli_error(run_info(tmp_path / "JNCE_2022229_44C99999_V01-raw.png"), "declares")


def test_png_not_8bit_grey(tmp_path):
    write_product(tmp_path, synthetic_label(), png_bytes(1648, 384, colour=2, rows=b""))
    with pytest.raises(CorruptProductError, match="not 8-bit greyscale"):
        load(tmp_path)


def test_truncated_png(data_dir, tmp_path):
    good = (data_dir / RAW_13544).read_bytes()
    label = json.loads((data_dir / JSON_13544).read_text())
    raw = write_product(tmp_path, label, good[: len(good) // 2])
    with pytest.raises(CorruptProductError, match="truncated"):
        load(raw)
    assert_one_line_cli_error(run_info(raw), "truncated")


def test_corrupt_png_bytes(data_dir, tmp_path):
    good = bytearray((data_dir / RAW_13544).read_bytes())
    good[len(good) // 2] ^= 0xFF
    label = json.loads((data_dir / JSON_13544).read_text())
    raw = write_product(tmp_path, label, bytes(good))
    with pytest.raises(CorruptProductError, match="CRC"):
        load(raw)
    assert_one_line_cli_error(run_info(raw), "CRC")


def test_corrupt_png_with_valid_crcs(tmp_path):
    """Damaged image data whose chunk CRCs were recomputed: libpng's refusal becomes our error."""
    data = png_bytes(1648, 384, rows=b"\x07" * (1649 * 384))  # filter type 7 does not exist
    write_product(tmp_path, synthetic_label(), data)
    with pytest.raises(CorruptProductError, match="damaged"):
        load(tmp_path)


def test_lines_that_do_not_match(tmp_path):
    raw = write_product(tmp_path, synthetic_label(lines=768), grey_png(384))
    with pytest.raises(ShapeMismatchError, match="LINES=768"):
        load(raw)
    assert_one_line_cli_error(run_info(raw), "LINES=768")


def test_lines_not_whole_frames(tmp_path):
    write_product(tmp_path, synthetic_label(lines=256), grey_png(256))
    with pytest.raises(ShapeMismatchError, match="whole number of frames"):
        load(tmp_path)


def test_unknown_bit_mode(tmp_path):
    raw = write_product(tmp_path, synthetic_label(SAMPLE_BIT_MODE_ID="LOG7"), grey_png(384))
    with pytest.raises(UnsupportedBitModeError, match="'LOG7'") as err:
        load(raw)
    assert "1-Metadata.json" in str(err.value)
    assert_one_line_cli_error(run_info(raw), "LOG7")


@pytest.mark.parametrize(("changes", "match"), [
    ({"EXPOSURE_DURATION": "-3.2 <ms>"}, "EXPOSURE_DURATION"),
    ({"FILTER_NAME": ["BLUE", "BLUE", "RED"]}, "repeats"),
    ({"FILTER_NAME": ["BLUE", "UV", "RED"]}, "unknown filter"),
    ({"FILTER_NAME": 7}, "FILTER_NAME"),
    ({"LINES": "1e999"}, "malformed"),
    ({"SAMPLING_FACTOR": 3}, "SAMPLING_FACTOR"),
    ({"EXPOSURE_DURATION": "3.2 <furlong>"}, "unit"),
])
def test_malformed_metadata_values(changes, match):
    with pytest.raises(ProductError, match=match):
        parse_metadata(synthetic_label(**changes), path="x-Metadata.json")


def test_filter_order_is_the_labels(tmp_path):
    write_product(tmp_path, synthetic_label(filters=("RED", "GREEN", "BLUE")), grey_png(384))
    raw = load(tmp_path)
    assert raw.meta.filters == ("RED", "GREEN", "BLUE")
    assert raw.band_index("BLUE") == 2


def test_summed_product(tmp_path):
    """SAMPLING_FACTOR 2: 64-row framelets, 824 samples."""
    label = synthetic_label(lines=192, SAMPLING_FACTOR=2, LINE_SAMPLES=824)
    write_product(tmp_path, label, grey_png(192, 824))
    raw = load(tmp_path)
    assert raw.framelets.shape == (1, 3, 64, 824)


def test_empty_folder(tmp_path):
    with pytest.raises(ProductError, match="no JunoCam product found"):
        load(tmp_path)
    assert_one_line_cli_error(run_info(tmp_path), "no JunoCam product found")


def test_unreadable_zip(tmp_path):
    bad = tmp_path / "13544-ImageSet.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)
    with pytest.raises(CorruptProductError, match="not a readable zip"):
        load(bad)
    assert_one_line_cli_error(run_info(bad), "not a readable zip")


def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.parametrize("member", [
    "../evil/JNCE_2022229_44C99999_V01-raw.png", "ImageSet/../../JNCE_2022229_44C99999_V01-raw.png",
    "/tmp/junoproc-evil/JNCE_2022229_44C99999_V01-raw.png", "C:/evil/JNCE_2022229_44C99999_V01-raw.png",
])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, member):
    work = tmp_path / "work"
    work.mkdir()
    archive = _zip_with(work / "1-ImageSet.zip", {member: grey_png(384)})
    with zipfile.ZipFile(archive) as zf:
        assert zf.namelist() == [member]  # the archive really holds the hostile name
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeArchiveError, match="points outside the archive"):
        load(archive)
    assert_one_line_cli_error(run_info(archive), "points outside the archive")
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/junoproc-evil").exists()
    (row,) = find_products(archive)
    assert row.problem and "points outside" in row.problem and row.error_type is UnsafeArchiveError


def _set_declared_size(archive: Path, size: int) -> None:
    """Rewrite the uncompressed size in the central directory (what zipfile trusts)."""
    data = bytearray(archive.read_bytes())
    at = data.rindex(b"PK\x01\x02")
    data[at + 24:at + 28] = struct.pack("<I", size)
    archive.write_bytes(bytes(data))


def test_zip_member_with_absurd_declared_size(tmp_path):
    member = "ImageSet/JNCE_2022229_44C99999_V01-raw.png"
    archive = _zip_with(tmp_path / "1-ImageSet.zip", {member: grey_png(384)})
    _set_declared_size(archive, MAX_MEMBER_BYTES + 1)
    with pytest.raises(CorruptProductError, match="decompression bomb"):
        load(archive)
    assert_one_line_cli_error(run_info(archive), "declares")


def test_zip_member_with_absurd_compression_ratio(tmp_path):
    archive = _zip_with(tmp_path / "1-Data.zip", {"DataSet/1-Metadata.json": b" " * (4 * 1024 * 1024)})
    with pytest.raises(CorruptProductError, match="expands"):
        load(archive)


def test_damaged_json_is_a_problem_row_in_a_folder(data_dir, tmp_path):
    shutil.copytree(data_dir / SET_13544, tmp_path / "13544-ImageSet")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/9-Metadata.json").write_text('{"PRODUCT_ID": ')
    entries = find_products(tmp_path)
    problems = [e for e in entries if e.problem]
    assert len(problems) == 1 and "not valid JSON" in problems[0].problem
    result = run_info(tmp_path)
    assert result.exit_code == 1
    assert "PROBLEM" in result.stdout and PJ44_RGB in result.stdout
    assert "Traceback" not in result.output
    # and the good product still loads by itself
    assert load(tmp_path / "13544-ImageSet").meta.product_id == PJ44_RGB


def test_load_entry_reraises_the_recorded_error_type():
    from junoproc.products import load_entry

    entry = ProductEntry("x.zip", None, None, None, problem="x.zip: zip entry points outside",
                         error_type=UnsafeArchiveError)
    with pytest.raises(UnsafeArchiveError):
        load_entry(entry)


def test_not_a_product_file(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(JunoprocError, match="not a JunoCam product file"):
        load(other)
    with pytest.raises(ProductError, match="no such file"):
        load(tmp_path / "missing.png")
