"""Property test: whatever happens to a real product's bytes or metadata, load() either
returns a RawImage or raises a JunoprocError (never anything else)."""

from __future__ import annotations

import io
import json
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from junoproc.errors import JunoprocError
from junoproc.products import RawImage, load

PRODUCT = "JNCE_2022186_43M00081_V01"  # the smallest real product (methane, 12 frames, 0.9 MB)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def real(data_dir):
    with zipfile.ZipFile(data_dir / "perijove43/13540-ImageSet.zip") as zf:
        png = zf.read(f"ImageSet/{PRODUCT}-raw.png")
    with zipfile.ZipFile(data_dir / "perijove43/13540-Data.zip") as zf:
        label = json.loads(zf.read("DataSet/13415-Metadata.json"))
    return png, label


def _load_or_junoproc_error(folder: Path, png: bytes, label_text: str) -> None:
    (folder / "ImageSet").mkdir(exist_ok=True)
    (folder / "DataSet").mkdir(exist_ok=True)
    (folder / f"ImageSet/{PRODUCT}-raw.png").write_bytes(png)
    (folder / "DataSet/13415-Metadata.json").write_text(label_text)
    for path in (folder, folder / f"ImageSet/{PRODUCT}-raw.png", folder / "DataSet/13415-Metadata.json"):
        try:
            result = load(path)
        except JunoprocError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(result, RawImage)
            assert result.pixels.shape == (result.meta.lines, result.meta.line_samples)


def _recrc(png: bytes) -> bytes:
    """Recompute every chunk CRC so that damage reaches libpng instead of our CRC check."""
    out = bytearray(png[:8])
    pos = 8
    while pos + 12 <= len(png):
        length = struct.unpack(">I", png[pos:pos + 4])[0]
        end = min(pos + 12 + length, len(png))
        body = png[pos + 4:end - 4]
        out += png[pos:pos + 8 + len(body) - 4] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end
    return bytes(out)


png_damage = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2**31)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1,
                                         max_size=6)),
    st.tuples(st.just("flip+crc"), st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1,
                                             max_size=6)),
)


def _damage(png: bytes, how) -> bytes:
    kind, arg = how
    if kind == "truncate":
        return png[: arg % len(png)]
    data = bytearray(png)
    for position, xor in arg:
        data[position % len(data)] ^= xor
    return _recrc(bytes(data)) if kind == "flip+crc" else bytes(data)


@FUZZ
@given(how=png_damage)
def test_damaged_png_loads_or_raises_junoproc_error(real, how):
    png, label = real
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_junoproc_error(Path(tmp), _damage(png, how), json.dumps(label))


json_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["3.2 <ms>", "1e999", "-1", "0", "SQROOT", "LIN8", "nan <s>", "N/A"]),
    st.lists(st.sampled_from(["BLUE", "GREEN", "RED", "METHANE", "UV", 3]), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(
    ["PRODUCT_ID", "FILE_NAME", "FILTER_NAME", "LINES", "LINE_SAMPLES", "SAMPLING_FACTOR",
     "EXPOSURE_DURATION", "INTERFRAME_DELAY", "JNO:TDI_STAGES_COUNT", "SAMPLE_BIT_MODE_ID", "START_TIME",
     "STOP_TIME", "PJ", "TARGET_NAME", "SOLAR_DISTANCE", "RATIONALE_DESC", "SPACECRAFT_ALTITUDE"]),
    st.one_of(st.just("<delete>"), json_values)), min_size=1, max_size=4),
    text_damage=st.one_of(st.none(), st.integers(0, 2000)))
def test_edited_metadata_loads_or_raises_junoproc_error(real, edits, text_damage):
    png, label = real
    label = dict(label)
    for key, value in edits:
        if value == "<delete>":
            label.pop(key, None)
        else:
            label[key] = value
    text = json.dumps(label)
    if text_damage is not None:  # also cut the JSON text itself
        text = text[: text_damage % (len(text) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        _load_or_junoproc_error(Path(tmp), png, text)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 2**31)))
def test_damaged_zip_loads_or_raises_junoproc_error(real, flips, cut):
    png, label = real
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"ImageSet/{PRODUCT}-raw.png", png)
        zf.writestr("DataSet/13415-Metadata.json", json.dumps(label))
    data = bytearray(buffer.getvalue())
    for position, xor in flips:
        data[position % len(data)] ^= xor
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "13540-ImageSet.zip"
        archive.write_bytes(bytes(data))
        try:
            result = load(archive)
        except JunoprocError as err:
            assert "\n" not in str(err)
        else:
            assert isinstance(result, RawImage)
