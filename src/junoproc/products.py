"""Raw JunoCam products: metadata records and framelet layout.

A product is one raw image (8-bit PNG from the mission site, or a PDS3 IMG) plus its
metadata (the site's ``<id>-Metadata.json`` or a PDS3 label). Pixels are framelets
stacked top to bottom: for each frame, one framelet per entry of FILTER_NAME, in that
order.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (
    CorruptProductError,
    JunoprocError,
    MissingMetadataError,
    MissingRawError,
    ProductError,
    ShapeMismatchError,
    UnsafeArchiveError,
)

#: Rows of one framelet on the CCD before summing.
FRAMELET_ROWS = 128
#: Columns of the CCD (photoactive and not) before summing.
CCD_SAMPLES = 1648

_UNIT_RE = re.compile(r"^\s*([-+0-9.eE]+)\s*(?:<\s*([^>]*)\s*>)?\s*$")
_DISTORTION_Y_RE = re.compile(r"INS-(615\d\d)_DISTORTION_Y\s*=\s*([-+0-9.eE]+)")
_BAND_NAIF_ID = {"BLUE": -61501, "GREEN": -61502, "RED": -61503, "METHANE": -61504}


def parse_quantity(value: Any, *, unit: str | None = None, key: str = "", path: Any = None) -> float:
    """Parse ``"0.373 <s>"`` / ``"3.2 <ms>"`` / ``0.373`` into a float.

    ``unit`` (when given) is the unit the caller wants; ``ms`` and ``s`` convert.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (list, tuple)) and len(value) == 2:  # pvl Quantity-like
        value = f"{value[0]} <{value[1]}>"
    if hasattr(value, "value") and hasattr(value, "units"):  # pvl.collections.Quantity
        value = f"{value.value} <{value.units}>"
    m = _UNIT_RE.match(str(value))
    if not m:
        raise MissingMetadataError(
            f"{key or 'value'} {value!r} is not a number with an optional <unit>",
            path=path,
            hint="check the metadata file is a JunoCam EDR label",
        )
    number = float(m.group(1))
    have = (m.group(2) or "").strip().lower()
    want = (unit or "").lower()
    if want and have and have != want:
        factors = {("ms", "s"): 1e-3, ("s", "ms"): 1e3}
        if (have, want) not in factors:
            raise MissingMetadataError(
                f"{key} has unit <{have}>, expected <{want}>", path=path, hint="unexpected label"
            )
        number *= factors[(have, want)]
    return number


@dataclass(frozen=True)
class ProductMeta:
    """The label fields junoproc uses, typed and with units stated in the names."""

    product_id: str
    perijove: int | None
    target: str
    start_time_utc: str
    stop_time_utc: str | None
    interframe_delay_s: float
    exposure_ms: float
    tdi_stages: int
    filters: tuple[str, ...]
    bit_mode: str
    sampling_factor: int
    lines: int
    line_samples: int
    spacecraft_clock_start: str | None = None
    rationale_desc: str = ""
    #: DISTORTION_Y overrides found in RATIONALE_DESC: band name -> cy in px.
    distortion_y_overrides: Mapping[str, float] = field(default_factory=dict)
    sub_spacecraft_lat_deg: float | None = None
    sub_spacecraft_lon_deg: float | None = None
    spacecraft_altitude_km: float | None = None
    #: Sun-target distance from the label's SOLAR_DISTANCE ("7.4237e+08 <km>").
    solar_distance_km: float | None = None
    title: str = ""
    file_name: str = ""
    metadata_path: str = ""
    #: The whole label as read (for the sidecar).
    raw_label: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_filters(self) -> int:
        return len(self.filters)

    @property
    def framelet_rows(self) -> int:
        """Rows of one framelet in the product (128 / SAMPLING_FACTOR)."""
        return FRAMELET_ROWS // self.sampling_factor

    @property
    def framelet_samples(self) -> int:
        return self.line_samples

    @property
    def n_frames(self) -> int:
        rows_per_frame = self.framelet_rows * self.n_filters
        return self.lines // rows_per_frame


def _label_get(label: Mapping[str, Any], key: str, path: Any, default: Any = ...) -> Any:
    if key in label and label[key] not in (None, ""):
        return label[key]
    if default is not ...:
        return default
    raise MissingMetadataError(
        f"metadata lacks {key}", path=path, hint="use the product's -Metadata.json or PDS3 label"
    )


def _optional_float(label: Mapping[str, Any], key: str) -> float | None:
    try:
        return parse_quantity(label[key])
    except (KeyError, MissingMetadataError, TypeError):
        return None


def distortion_y_overrides(rationale: str) -> dict[str, float]:
    """``INS-61504_DISTORTION_Y = 311.48`` inside RATIONALE_DESC -> {"METHANE": 311.48}."""
    by_id = {v: k for k, v in _BAND_NAIF_ID.items()}
    out: dict[str, float] = {}
    for naif, value in _DISTORTION_Y_RE.findall(rationale or ""):
        band = by_id.get(-int(naif))
        if band:
            out[band] = float(value)
    return out


def parse_metadata(label: Mapping[str, Any], *, path: str | Path | None = None) -> ProductMeta:
    """Typed record from the site's JSON or a PDS3 label (as a mapping).

    Anything malformed (wrong types, absurd values) raises a :class:`ProductError`
    naming ``path``, never a bare ``TypeError``/``ValueError``.
    """
    if not isinstance(label, Mapping):
        raise MissingMetadataError(
            f"metadata is a {type(label).__name__}, not a mapping of keywords", path=path,
            hint="use the product's -Metadata.json or PDS3 label",
        )
    try:
        meta = _parse_metadata(label, path=path)
    except ProductError:
        raise
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError) as err:
        raise MissingMetadataError(
            f"metadata is malformed ({type(err).__name__}: {err})", path=path,
            hint="use the product's original -Metadata.json or PDS3 label",
        ) from None
    _validate_meta(meta, path=path)
    return meta


def _validate_meta(meta: ProductMeta, *, path: Any) -> None:
    """Values that would make every later stage fail: refuse them here, with the key named."""
    checks = (
        ("EXPOSURE_DURATION", meta.exposure_ms, 0.0, 1e5),
        ("INTERFRAME_DELAY", meta.interframe_delay_s, 0.0, 1e3),
        ("LINES", meta.lines, 0, 10_000_000),
        ("LINE_SAMPLES", meta.line_samples, 0, 100_000),
        ("JNO:TDI_STAGES_COUNT", meta.tdi_stages, 0, 10_000),
    )
    for key, value, low, high in checks:
        if not (math.isfinite(value) and low < value <= high):
            raise MissingMetadataError(
                f"{key} = {value} is out of range ({low}, {high}]", path=path,
                hint="the metadata file is damaged; download it again",
            )
    if len(set(meta.filters)) != len(meta.filters):
        raise MissingMetadataError(
            f"FILTER_NAME {list(meta.filters)} repeats a filter", path=path,
            hint="the metadata file is damaged; download it again",
        )


def _parse_metadata(label: Mapping[str, Any], *, path: str | Path | None = None) -> ProductMeta:
    label = {str(k).upper(): v for k, v in label.items()}
    filters_raw = _label_get(label, "FILTER_NAME", path)
    if isinstance(filters_raw, str):
        filters = tuple(
            f.strip().strip("'\"").upper() for f in filters_raw.strip("(){}").split(",") if f.strip()
        )
    elif isinstance(filters_raw, (list, tuple)):
        filters = tuple(str(f).strip().upper() for f in filters_raw)
    else:
        raise MissingMetadataError(
            f"FILTER_NAME {filters_raw!r} is not a list of filter names", path=path,
            hint="the metadata file is damaged; download it again",
        )
    if not filters:
        raise MissingMetadataError("FILTER_NAME is empty", path=path, hint="label is incomplete")
    for f in filters:
        if f not in _BAND_NAIF_ID:
            raise MissingMetadataError(
                f"unknown filter {f!r} in FILTER_NAME", path=path,
                hint="JunoCam filters are BLUE, GREEN, RED, METHANE",
            )
    pj_raw = label.get("PJ", label.get("ORBIT_NUMBER"))
    try:
        perijove = int(str(pj_raw)) if pj_raw not in (None, "", "N/A") else None
    except ValueError:
        perijove = None
    rationale = str(label.get("RATIONALE_DESC", "") or "")
    sampling = int(parse_quantity(label.get("SAMPLING_FACTOR", 1), key="SAMPLING_FACTOR", path=path))
    if sampling not in (1, 2, 4, 8):
        raise ShapeMismatchError(f"SAMPLING_FACTOR {sampling} is not 1, 2, 4 or 8", path=path)
    stop = label.get("STOP_TIME")
    return ProductMeta(
        product_id=str(_label_get(label, "PRODUCT_ID", path)).strip(),
        perijove=perijove,
        target=str(_label_get(label, "TARGET_NAME", path)).strip().upper(),
        start_time_utc=str(_label_get(label, "START_TIME", path)).strip().rstrip("Z"),
        stop_time_utc=str(stop).strip().rstrip("Z") if stop not in (None, "", "N/A") else None,
        interframe_delay_s=parse_quantity(
            _label_get(label, "INTERFRAME_DELAY", path), unit="s", key="INTERFRAME_DELAY", path=path
        ),
        exposure_ms=parse_quantity(
            _label_get(label, "EXPOSURE_DURATION", path), unit="ms", key="EXPOSURE_DURATION",
            path=path,
        ),
        tdi_stages=int(parse_quantity(label.get("JNO:TDI_STAGES_COUNT", 1) or 1)),
        filters=filters,
        bit_mode=str(_label_get(label, "SAMPLE_BIT_MODE_ID", path)).strip().upper(),
        sampling_factor=sampling,
        lines=int(parse_quantity(_label_get(label, "LINES", path), key="LINES", path=path)),
        line_samples=int(
            parse_quantity(label.get("LINE_SAMPLES", CCD_SAMPLES // sampling), key="LINE_SAMPLES")
        ),
        spacecraft_clock_start=(str(label["SPACECRAFT_CLOCK_START_COUNT"]).strip()
                                if label.get("SPACECRAFT_CLOCK_START_COUNT") else None),
        rationale_desc=rationale,
        distortion_y_overrides=distortion_y_overrides(rationale),
        sub_spacecraft_lat_deg=_optional_float(label, "SUB_SPACECRAFT_LATITUDE"),
        sub_spacecraft_lon_deg=_optional_float(label, "SUB_SPACECRAFT_LONGITUDE"),
        spacecraft_altitude_km=_optional_float(label, "SPACECRAFT_ALTITUDE"),
        solar_distance_km=_optional_float(label, "SOLAR_DISTANCE"),
        title=str(label.get("TITLE", "") or ""),
        file_name=str(label.get("FILE_NAME", "") or ""),
        metadata_path=str(path) if path is not None else "",
        raw_label=label,
    )


def check_shape(meta: ProductMeta, shape: tuple[int, ...], *, path: Any = None) -> None:
    """Pixels must be LINES x LINE_SAMPLES and a whole number of frames."""
    if len(shape) != 2:
        raise ShapeMismatchError(f"expected a 2-D grey image, got shape {shape}", path=path)
    lines, samples = shape
    if samples != meta.line_samples or samples * meta.sampling_factor != CCD_SAMPLES:
        raise ShapeMismatchError(
            f"image is {samples} samples wide; label says LINE_SAMPLES={meta.line_samples}, "
            f"SAMPLING_FACTOR={meta.sampling_factor}", path=path,
            hint="the raw and metadata files belong to different products",
        )
    if lines != meta.lines:
        raise ShapeMismatchError(
            f"image has {lines} lines; label says LINES={meta.lines}", path=path,
            hint="the raw file may be truncated or the metadata belongs to another product",
        )
    per_frame = meta.framelet_rows * meta.n_filters
    if lines % per_frame:
        raise ShapeMismatchError(
            f"{lines} lines is not a whole number of frames of {meta.n_filters} "
            f"x {meta.framelet_rows}-row framelets", path=path,
        )


@dataclass(frozen=True)
class RawImage:
    """A decoded raw product: 8-bit companded pixels, still in the product's layout."""

    meta: ProductMeta
    pixels: np.ndarray = field(repr=False)  # uint8 (lines, samples)
    raw_path: str = ""

    @property
    def framelets(self) -> np.ndarray:
        """View shaped (n_frames, n_filters, rows, samples), bands in FILTER_NAME order."""
        m = self.meta
        return self.pixels.reshape(m.n_frames, m.n_filters, m.framelet_rows, m.framelet_samples)

    def band_index(self, band: str) -> int:
        try:
            return self.meta.filters.index(band.upper())
        except ValueError:
            raise ShapeMismatchError(
                f"band {band} not in FILTER_NAME {list(self.meta.filters)}", path=self.raw_path
            ) from None


# ---------------------------------------------------------------------------------------
# Finding products on disk and in zips
# ---------------------------------------------------------------------------------------

#: Largest zip member junoproc will read (a 66-frame raw PNG is ~4 MB; 64 MB is generous).
MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: Largest metadata file (JSON or PDS3 label) junoproc will read.
MAX_METADATA_BYTES = 1024 * 1024
#: Largest uncompressed/compressed ratio of a zip member bigger than 1 MB (PNG ~1, JSON ~3).
MAX_COMPRESSION_RATIO = 100
#: Largest image a raw PNG/IMG may declare: full-width framelets, 200000 lines (~520 frames of 3 bands).
MAX_IMAGE_SAMPLES = CCD_SAMPLES
MAX_IMAGE_LINES = 200_000
#: How many directory entries one neighbourhood search may visit (guards against scanning a disk).
_MAX_SCAN_ENTRIES = 20_000

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RAW_PNG_RE = re.compile(r"^(?P<id>.+?)-raw\.png$", re.IGNORECASE)
_SITE_JSON_RE = re.compile(r"-metadata\.json$", re.IGNORECASE)
#: PDS3 JunoCam products: JNCE_2022229_44C00032_V01.IMG / .LBL (other .lbl files are not ours).
_PDS3_RE = re.compile(r"^JNC[ER]_\d{7}_\d{2}[A-Z]\d{5}_V\d{2}\.(?P<ext>LBL|IMG)$", re.IGNORECASE)


@dataclass(frozen=True)
class Location:
    """Where a file lives: a path on disk, or a member of a zip archive (``path`` is the zip)."""

    path: str
    member: str | None = None

    @property
    def name(self) -> str:
        """The file's own name (last component of the member or the path)."""
        return _basename(self.member) if self.member else Path(self.path).name

    @property
    def in_zip(self) -> bool:
        return self.member is not None

    def __str__(self) -> str:
        return f"{self.path}!{self.member}" if self.member else self.path


@dataclass(frozen=True)
class ProductEntry:
    """One product found in a folder: where its raw image and metadata are, and what is missing.

    ``missing`` is ``"raw"`` (metadata without its image), ``"metadata"`` (an image whose
    metadata is not there) or ``None``. ``problem`` is the one-line error of a file that
    was found but cannot be read (bad zip, unsafe member, damaged JSON); such entries have
    neither ``raw`` nor ``metadata``.
    """

    product_id: str
    raw: Location | None
    metadata: Location | None
    missing: str | None
    #: "site" (PNG + JSON from the mission site) or "pds3" (IMG + LBL).
    kind: str = "site"
    problem: str | None = None
    #: The error class of ``problem`` (re-raised by :func:`load`).
    error_type: type[JunoprocError] | None = field(default=None, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        return self.missing is None and self.problem is None


def _basename(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _check_member_name(zip_path: Path, name: str) -> None:
    """Refuse absolute names, drive letters and ``..`` components (zip-slip)."""
    norm = name.replace("\\", "/")
    parts = norm.split("/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts:
        raise UnsafeArchiveError(
            f"zip entry {name!r} points outside the archive", path=zip_path,
            hint="refusing to read it; re-download the archive from the mission site",
        )


def _check_member_size(zip_path: Path, info: zipfile.ZipInfo) -> None:
    if info.file_size > MAX_MEMBER_BYTES:
        raise CorruptProductError(
            f"zip entry {info.filename!r} declares {info.file_size} bytes (limit {MAX_MEMBER_BYTES})",
            path=zip_path, hint="not a JunoCam image set; refusing a possible decompression bomb",
        )
    if info.file_size > 1024 * 1024 and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise CorruptProductError(
            f"zip entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):.0f}x",
            path=zip_path, hint="not a JunoCam image set; refusing a possible decompression bomb",
        )


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
        raise CorruptProductError(
            f"not a readable zip archive ({err})", path=zip_path,
            hint="the download is incomplete or damaged; download it again",
        ) from None


def read_bytes(location: Location, *, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of a file or zip member, read into memory (nothing is extracted to disk).

    Members with unsafe names or absurd declared sizes are refused before reading.
    """
    path = Path(location.path)
    if location.member is None:
        try:
            size = path.stat().st_size
            if size > limit:
                raise CorruptProductError(
                    f"file is {size} bytes (limit {limit})", path=path,
                    hint="not a JunoCam product; refusing to read it",
                )
            return path.read_bytes()
        except FileNotFoundError:
            raise ProductError("file not found", path=path, hint="check the path") from None
        except IsADirectoryError:
            raise ProductError("is a folder, not a file", path=path, hint="pass a file") from None
        except OSError as err:
            raise CorruptProductError(f"cannot read ({err.strerror or err})", path=path,
                                      hint="check permissions and the disk") from None
    _check_member_name(path, location.member)
    with _open_zip(path) as zf:
        try:
            info = zf.getinfo(location.member)
        except KeyError:
            raise ProductError(f"zip has no entry {location.member!r}", path=path,
                               hint="the archive changed since it was listed") from None
        _check_member_size(path, info)
        if info.file_size > limit:
            raise CorruptProductError(
                f"zip entry {info.filename!r} is {info.file_size} bytes (limit {limit})", path=path,
                hint="not a JunoCam product; refusing to read it",
            )
        try:
            with zf.open(info) as fh:
                data = fh.read(limit + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError,
                zlib.error) as err:
            raise CorruptProductError(
                f"zip entry {info.filename!r} is damaged ({err})", path=path,
                hint="the download is incomplete or damaged; download it again",
            ) from None
    if len(data) > limit:
        raise CorruptProductError(f"zip entry {info.filename!r} is larger than declared", path=path,
                                  hint="refusing a possible decompression bomb")
    return data


# -- metadata readers ---------------------------------------------------------------------

def read_site_json(data: bytes, *, path: Any) -> dict[str, Any]:
    """The mission site's ``-Metadata.json`` as a dict (damage -> CorruptProductError)."""
    try:
        label = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptProductError(
            f"metadata is not valid JSON ({type(err).__name__})", path=path,
            hint="the download is incomplete or damaged; download the <id>-Data.zip again",
        ) from None
    if not isinstance(label, dict):
        raise CorruptProductError(
            "metadata JSON is not an object of keywords", path=path,
            hint="the download is damaged; download the <id>-Data.zip again",
        )
    return label


def _plain_value(value: Any) -> Any:
    """pvl values -> what the site JSON would hold (ISO strings for times)."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return value


def read_pds3_label(data: bytes, *, path: Any) -> dict[str, Any]:
    """A PDS3 label as one flat dict: top-level keywords plus the IMAGE object's."""
    with warnings.catch_warnings():  # pvl warns about its own Units class when imported
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        import pvl

    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        module = pvl.loads(text)
    except Exception as err:  # pvl raises several exception types on bad labels
        raise CorruptProductError(
            f"PDS3 label cannot be parsed ({type(err).__name__})", path=path,
            hint="the label is damaged; download the .LBL again",
        ) from None
    flat: dict[str, Any] = {}
    image: Mapping[str, Any] | None = None
    for key, value in module.items():
        if isinstance(value, Mapping):
            if str(key).upper() == "IMAGE":
                image = value
            continue
        flat[str(key).upper()] = _plain_value(value)
    if image is None:
        raise CorruptProductError(
            "PDS3 label has no IMAGE object", path=path, hint="not a JunoCam EDR label",
        )
    for key, value in image.items():
        if not isinstance(value, Mapping):
            flat[str(key).upper()] = _plain_value(value)
    return flat


def _pds3_image_pointer(label: Mapping[str, Any], label_name: str) -> tuple[str, int]:
    """(file name, byte offset) of the image from ``^IMAGE`` (detached labels)."""
    pointer = label.get("^IMAGE")
    record_bytes = label.get("RECORD_BYTES")
    if isinstance(pointer, (list, tuple)) and len(pointer) == 2 and isinstance(pointer[0], str):
        name, start = pointer[0], pointer[1]
    elif isinstance(pointer, str):
        name, start = pointer, 1
    else:  # attached label or missing pointer: the IMG beside the label, from its start
        return Path(label_name).with_suffix(".IMG").name, 0
    offset = 0
    if hasattr(start, "units") and str(getattr(start, "units", "")).upper().startswith("BYTE"):
        offset = int(start.value) - 1
    elif isinstance(start, int) and start > 1:
        offset = (start - 1) * int(record_bytes if isinstance(record_bytes, int) else 0)
    return _basename(name), max(offset, 0)


# -- scanning -----------------------------------------------------------------------------

@dataclass
class _Scan:
    """What a walk found, before pairing."""

    raws: list[Location] = field(default_factory=list)
    metas: list[tuple[Location, dict[str, Any]]] = field(default_factory=list)
    imgs: list[Location] = field(default_factory=list)
    labels: list[tuple[Location, dict[str, Any]]] = field(default_factory=list)
    problems: list[ProductEntry] = field(default_factory=list)
    visited: int = 0


def _problem(name: str, err: JunoprocError) -> ProductEntry:
    return ProductEntry(product_id=name, raw=None, metadata=None, missing=None,
                        problem=err.one_line(), error_type=type(err))


def _classify(scan: _Scan, loc: Location) -> None:
    name = loc.name
    try:
        if _RAW_PNG_RE.match(name):
            scan.raws.append(loc)
        elif _SITE_JSON_RE.search(name):
            scan.metas.append((loc, read_site_json(read_bytes(loc, limit=MAX_METADATA_BYTES), path=loc)))
        elif (m := _PDS3_RE.match(name)) and m.group("ext").upper() == "LBL":
            scan.labels.append((loc, read_pds3_label(read_bytes(loc, limit=MAX_METADATA_BYTES), path=loc)))
        elif m:
            scan.imgs.append(loc)
    except JunoprocError as err:
        scan.problems.append(_problem(name, err))


def _scan_zip(scan: _Scan, zip_path: Path) -> None:
    try:
        with _open_zip(zip_path) as zf:
            infos = zf.infolist()
    except JunoprocError as err:
        scan.problems.append(_problem(zip_path.name, err))
        return
    for info in infos:
        if info.is_dir():
            continue
        try:
            _check_member_name(zip_path, info.filename)
            base = _basename(info.filename)
            relevant = bool(_RAW_PNG_RE.match(base) or _SITE_JSON_RE.search(base) or _PDS3_RE.match(base))
            if relevant:
                _check_member_size(zip_path, info)
        except JunoprocError as err:
            scan.problems.append(_problem(zip_path.name, err))
            continue
        if relevant:
            _classify(scan, Location(str(zip_path), info.filename))


def _walk(scan: _Scan, root: Path, max_depth: int | None) -> None:
    """Depth-first, sorted, no symlinked folders, no hidden folders; zips are opened in memory."""
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            children = sorted(folder.iterdir())
        except OSError:
            continue
        subdirs = []
        for child in children:
            scan.visited += 1
            if scan.visited > _MAX_SCAN_ENTRIES:
                return
            try:
                if child.is_dir():
                    if not child.is_symlink() and not child.name.startswith("."):
                        subdirs.append(child)
                    continue
            except OSError:
                continue
            if child.suffix.lower() == ".zip":
                _scan_zip(scan, child)
            else:
                _classify(scan, Location(str(child)))
        if max_depth is None or depth < max_depth:
            stack.extend((d, depth + 1) for d in reversed(subdirs))


def _closeness(a: Location, b: Location) -> tuple[int, int]:
    """Sort key: prefer unzipped files, then locations sharing the longest folder prefix."""
    pa = Path(a.path).parts
    pb = Path(b.path).parts
    common = 0
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        common += 1
    return (1 if b.in_zip else 0, -common)


def _raw_key(name: str) -> str:
    m = _RAW_PNG_RE.match(name)
    return (m.group("id") if m else name).upper()


def _pair(scan: _Scan) -> list[ProductEntry]:
    """Pair images with metadata by FILE_NAME / PRODUCT_ID inside the metadata (never by the
    numeric image-set id in the zip or JSON name: 13540-Data.zip holds 13415-Metadata.json)."""
    entries: dict[str, ProductEntry] = {}
    raws_by_name: dict[str, list[Location]] = {}
    for loc in scan.raws:
        raws_by_name.setdefault(loc.name.upper(), []).append(loc)
        raws_by_name.setdefault(_raw_key(loc.name), []).append(loc)
    used: set[Location] = set()

    def add(entry: ProductEntry) -> None:
        old = entries.get(entry.product_id)
        # keep the most complete entry; among equals the first found (unzipped before zipped)
        if old is None or (old.missing is not None and entry.missing is None):
            entries[entry.product_id] = entry

    for meta_loc, label in scan.metas:
        pid = str(label.get("PRODUCT_ID") or "").strip()
        file_name = _basename(str(label.get("FILE_NAME") or "")).strip()
        if not pid:
            pid = _raw_key(file_name) if file_name else meta_loc.name
        candidates = raws_by_name.get(file_name.upper(), []) if file_name else []
        if not candidates:
            candidates = raws_by_name.get(pid.upper(), [])
        if candidates:
            raw = min(candidates, key=lambda c, m=meta_loc: _closeness(m, c))
            used.update(c for c in candidates)
            add(ProductEntry(pid, raw, meta_loc, None, "site"))
        else:
            add(ProductEntry(pid, None, meta_loc, "raw", "site"))

    imgs_by_name: dict[str, list[Location]] = {}
    for loc in scan.imgs:
        imgs_by_name.setdefault(loc.name.upper(), []).append(loc)
    used_imgs: set[Location] = set()
    for lbl_loc, label in scan.labels:
        pid = str(label.get("PRODUCT_ID") or Path(lbl_loc.name).stem).strip()
        img_name, _ = _pds3_image_pointer(label, lbl_loc.name)
        candidates = imgs_by_name.get(img_name.upper(), [])
        if candidates:
            img = min(candidates, key=lambda c, m=lbl_loc: _closeness(m, c))
            used_imgs.update(candidates)
            add(ProductEntry(pid, img, lbl_loc, None, "pds3"))
        else:
            add(ProductEntry(pid, None, lbl_loc, "raw", "pds3"))

    for loc in scan.raws:
        if loc not in used:
            add(ProductEntry(_raw_key(loc.name), loc, None, "metadata", "site"))
    for loc in scan.imgs:
        if loc not in used_imgs:
            add(ProductEntry(Path(loc.name).stem.upper(), loc, None, "metadata", "pds3"))
    return sorted(entries.values(), key=lambda e: e.product_id) + scan.problems


def find_products(folder: str | Path, *, max_depth: int | None = None) -> list[ProductEntry]:
    """Every product under ``folder`` (or inside one zip), paired by PRODUCT_ID / FILE_NAME.

    Looks at any depth (``max_depth`` limits it) in folders and zip archives, for
    mission-site raw PNGs (``*-raw.png``), their ``*-Metadata.json`` and PDS3 ``.IMG`` +
    ``.LBL``. Incomplete products and unreadable files are entries (``missing`` /
    ``problem``), not exceptions. Nothing is extracted to disk.
    """
    root = Path(folder)
    scan = _Scan()
    if root.is_dir():
        _walk(scan, root, max_depth)
    elif root.is_file():
        if root.suffix.lower() == ".zip":
            _scan_zip(scan, root)
        else:
            _classify(scan, Location(str(root)))
    else:
        raise ProductError("no such file or folder", path=root, hint="check the path")
    return _pair(scan)


# ---------------------------------------------------------------------------------------
# Decoding pixels
# ---------------------------------------------------------------------------------------

def png_header(data: bytes, *, path: Any = None) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk, read without decoding."""
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE:
        raise CorruptProductError("not a PNG file (bad signature)", path=path,
                                  hint="the download is damaged; download it again")
    length, ctype = struct.unpack(">I4s", data[8:16])
    if ctype != b"IHDR" or length != 13:
        raise CorruptProductError("PNG lacks its IHDR header", path=path,
                                  hint="the download is damaged; download it again")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def _check_png_chunks(data: bytes, *, path: Any) -> None:
    """Walk the chunks: lengths in range, CRCs right, IDAT present, IEND last.

    Catches truncation and byte damage in Python (one clear error) before libpng sees
    the data (which would print its own messages to stderr).
    """
    pos = 8
    n = len(data)
    seen_idat = False
    while True:
        if pos + 12 > n:
            raise CorruptProductError("PNG is truncated (no IEND chunk)", path=path,
                                      hint="the download is incomplete; download it again")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > n:
            raise CorruptProductError("PNG is truncated (a chunk runs past the end)", path=path,
                                      hint="the download is incomplete; download it again")
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
            raise CorruptProductError(f"PNG chunk {ctype!r} at byte {pos} fails its CRC", path=path,
                                      hint="the file is damaged; download it again")
        if ctype == b"IDAT":
            seen_idat = True
        if ctype == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise CorruptProductError("PNG has no image data", path=path,
                                  hint="the file is damaged; download it again")


def decode_png(data: bytes, *, path: Any = None) -> np.ndarray:
    """8-bit single-channel PNG bytes -> uint8 (lines, samples), refusing absurd sizes first."""
    import cv2

    width, height, depth, colour = png_header(data, path=path)
    if not (0 < width <= MAX_IMAGE_SAMPLES and 0 < height <= MAX_IMAGE_LINES):
        raise CorruptProductError(
            f"PNG declares {width} x {height} pixels (limit {MAX_IMAGE_SAMPLES} x {MAX_IMAGE_LINES})",
            path=path, hint="not a JunoCam raw image; refusing a possible decompression bomb",
        )
    if depth != 8 or colour != 0:
        raise CorruptProductError(
            f"PNG is {depth}-bit colour type {colour}, not 8-bit greyscale", path=path,
            hint="use the mission site's -raw.png (not the -mapprojected.png or an edited copy)",
        )
    _check_png_chunks(data, path=path)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise CorruptProductError(f"PNG cannot be decoded ({str(err).strip().splitlines()[-1]})",
                                  path=path, hint="the file is damaged; download it again") from None
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape != (height, width):
        raise CorruptProductError("PNG image data is damaged", path=path,
                                  hint="the file is damaged; download it again")
    return pixels


def decode_img(data: bytes, meta: ProductMeta, *, offset: int = 0, path: Any = None) -> np.ndarray:
    """PDS3 EDR image bytes -> uint8 (LINES, LINE_SAMPLES)."""
    bits = meta.raw_label.get("SAMPLE_BITS", 8)
    if bits != 8:
        raise CorruptProductError(
            f"SAMPLE_BITS = {bits}: only 8-bit EDR images (JNCE_*) are supported", path=path,
            hint="use the EDR product, not the 16-bit RDR (JNCR_*)",
        )
    if not (0 < meta.line_samples <= MAX_IMAGE_SAMPLES and 0 < meta.lines <= MAX_IMAGE_LINES):
        raise CorruptProductError(
            f"label declares {meta.line_samples} x {meta.lines} pixels", path=path,
            hint="not a JunoCam EDR; refusing a possible decompression bomb",
        )
    need = meta.lines * meta.line_samples
    if len(data) < offset + need:
        raise CorruptProductError(
            f"IMG holds {max(len(data) - offset, 0)} bytes of image; label says LINES x LINE_SAMPLES = "
            f"{need}", path=path, hint="the IMG is truncated or belongs to another label",
        )
    return np.frombuffer(data, np.uint8, count=need, offset=offset).reshape(meta.lines, meta.line_samples)


def _missing_metadata_error(entry: ProductEntry) -> MissingMetadataError:
    assert entry.raw is not None
    want = "a PDS3 .LBL beside it" if entry.kind == "pds3" else (
        "its <id>-Metadata.json from the same image set (the <id>-Data.zip), or a PDS3 .LBL")
    return MissingMetadataError(
        "no metadata", path=entry.raw.name if not entry.raw.in_zip else str(entry.raw),
        hint=f"{entry.product_id} needs {want}",
    )


def _missing_raw_error(entry: ProductEntry) -> MissingRawError:
    assert entry.metadata is not None
    if entry.kind == "pds3":
        hint = f"download the .IMG of {entry.product_id} next to its label"
    else:
        hint = (f"download the <id>-ImageSet.zip holding {entry.product_id}-raw.png and keep it "
                "beside the metadata")
    return MissingRawError(f"metadata of {entry.product_id} without its raw image", path=str(entry.metadata),
                           hint=hint)


def load_entry(entry: ProductEntry) -> RawImage:
    """Decode one :class:`ProductEntry` (raises the error of whatever is missing or broken)."""
    if entry.problem is not None:
        raise (entry.error_type or CorruptProductError)(entry.problem)
    if entry.missing == "metadata" or entry.metadata is None:
        raise _missing_metadata_error(entry)
    if entry.missing == "raw" or entry.raw is None:
        raise _missing_raw_error(entry)
    meta_bytes = read_bytes(entry.metadata, limit=MAX_METADATA_BYTES)
    if entry.kind == "pds3":
        label = read_pds3_label(meta_bytes, path=entry.metadata)
    else:
        label = read_site_json(meta_bytes, path=entry.metadata)
    meta = parse_metadata(label, path=str(entry.metadata))
    from .calibrate import companding_table  # the decompanding tables live there (lazy: no cycle)

    companding_table(meta.bit_mode, path=entry.metadata)  # unknown SAMPLE_BIT_MODE_ID -> error now
    raw_bytes = read_bytes(entry.raw)
    if entry.kind == "pds3":
        _, offset = _pds3_image_pointer(label, entry.metadata.name)
        pixels = decode_img(raw_bytes, meta, offset=offset, path=entry.raw)
    else:
        pixels = decode_png(raw_bytes, path=entry.raw)
    check_shape(meta, pixels.shape, path=entry.raw)
    return RawImage(meta=meta, pixels=pixels, raw_path=str(entry.raw))


def _search_roots(path: Path) -> list[tuple[Path, int]]:
    """Folders to search for the other half of a product, nearest first.

    A raw in ``X/ImageSet/`` has its JSON in ``X/DataSet/``; a zipped set has its
    ``-Data.zip`` beside the ``-ImageSet.zip``; a half-unzipped set has it one level up.
    """
    roots = [(path.parent, 1)]
    stops = {Path(path.anchor), Path.home(), Path.home().parent}
    folder = path.parent
    for _ in range(2):  # climb at most two levels, never to the home folder or the root
        if folder in stops or folder.parent == folder or folder.parent in stops:
            break
        folder = folder.parent
        roots.append((folder, 2))
    return roots


def _find_for(path: Path, match) -> ProductEntry | None:
    """The entry satisfying ``match`` in the nearest search root that completes it."""
    best: ProductEntry | None = None
    for root, depth in _search_roots(path):
        for entry in find_products(root, max_depth=depth):
            if entry.problem is None and match(entry):
                if entry.complete:
                    return entry
                best = best or entry
    return best


def load(path: str | Path) -> RawImage:
    """Decode a raw product from any form a user has.

    ``path`` may be a ``-raw.png``, a ``-Metadata.json``, a PDS3 ``.IMG`` or ``.LBL``, an
    ``-ImageSet.zip`` / ``-Data.zip``, or a folder holding one product (an unzipped image
    set). The other half of the product is found nearby and paired by PRODUCT_ID /
    FILE_NAME. Every failure is a :class:`~junoproc.errors.ProductError` naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise ProductError("no such file or folder", path=p, hint="check the path")
    if p.is_dir():
        return load_entry(_single(find_products(p), p))
    lower = p.name.lower()
    if lower.endswith(".zip"):
        found = find_products(p)
        inside = [e for e in found if e.problem is None]
        if not inside and found:
            return load_entry(found[0])
        if not inside:
            raise ProductError("zip holds no JunoCam product", path=p,
                               hint="expected ImageSet/JNCE_*-raw.png or DataSet/*-Metadata.json")
        ids = {e.product_id for e in inside}
        if len(ids) == 1 and not inside[0].complete:
            pid = inside[0].product_id
            entry = _find_for(p, lambda e: e.product_id == pid) or inside[0]
            return load_entry(entry)
        return load_entry(_single(inside, p))
    if _RAW_PNG_RE.match(p.name) or lower.endswith(".png"):
        raw = Location(str(p))
        entry = _find_for(p, lambda e: e.raw == raw)
        if entry is None:  # a PNG not named *-raw.png: decode it to report what is wrong
            decode_png(read_bytes(raw), path=p)
            entry = ProductEntry(p.stem.upper(), raw, None, "metadata", "site")
        return load_entry(entry)
    if lower.endswith(".json"):
        meta_loc = Location(str(p))
        label = read_site_json(read_bytes(meta_loc, limit=MAX_METADATA_BYTES), path=p)
        pid = str(label.get("PRODUCT_ID") or "").strip()
        entry = _find_for(p, lambda e: e.metadata == meta_loc or (bool(pid) and e.product_id == pid))
        return load_entry(entry or ProductEntry(pid or p.stem, None, meta_loc, "raw", "site"))
    if lower.endswith((".img", ".lbl")):
        loc = Location(str(p))
        entry = _find_for(p, lambda e: e.raw == loc or e.metadata == loc)
        if entry is None:
            missing = "metadata" if lower.endswith(".img") else "raw"
            entry = ProductEntry(p.stem.upper(), loc if missing == "metadata" else None,
                                 loc if missing == "raw" else None, missing, "pds3")
        return load_entry(entry)
    raise ProductError("not a JunoCam product file", path=p,
                       hint="pass a -raw.png, -Metadata.json, .zip, PDS3 .IMG/.LBL or a folder")


def _utc_s(utc: str) -> float:
    return datetime.datetime.fromisoformat(utc.rstrip("Z")).replace(tzinfo=datetime.UTC).timestamp()


def pass_siblings(path: str | Path, meta: ProductMeta, *, max_span_s: float) -> list[RawImage]:
    """The other complete products of ``meta``'s pass beside ``path`` (the folder holding it,
    or its parent for a file or zip): same target, start times within ``max_span_s``.
    Unreadable neighbours are left out: they are not what the user asked about."""
    p = Path(path)
    folder = p.parent if p.is_file() or not p.exists() else p
    if p.is_dir() and len([e for e in find_products(p) if e.complete]) <= 1:
        folder = p.parent  # a folder holding this one product: its neighbours are beside it
    try:
        t0 = _utc_s(meta.start_time_utc)
    except ValueError:
        return []
    out: list[RawImage] = []
    for entry in find_products(folder, max_depth=2):
        if not entry.complete or entry.product_id == meta.product_id:
            continue
        try:
            other = load_metadata(entry)
            far = abs(_utc_s(other.start_time_utc) - t0) > max_span_s
            if other.target.upper() != meta.target.upper() or far:
                continue
            out.append(load_entry(entry))
        except (JunoprocError, ValueError):
            continue
    return out


def _single(entries: list[ProductEntry], where: Path) -> ProductEntry:
    if not entries:
        raise ProductError("no JunoCam product found", path=where,
                           hint="expected JNCE_*-raw.png with its -Metadata.json, zips of them, "
                                "or PDS3 .IMG/.LBL")
    complete = [e for e in entries if e.complete]
    if len(complete) == 1:
        return complete[0]
    if len(complete) > 1:
        names = ", ".join(e.product_id for e in complete[:3])
        raise ProductError(f"folder holds {len(complete)} products ({names}, ...)", path=where,
                           hint="pass one product's file, or use find_products() / junoproc build")
    # nothing complete: report the first problem (missing halves before unreadable files)
    incomplete = [e for e in entries if e.problem is None]
    return (incomplete or entries)[0]


# ---------------------------------------------------------------------------------------
# What a file or folder holds (for `junoproc info`)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProductSummary:
    """One row of ``junoproc info``: a product, what its label says, what is missing or broken."""

    product_id: str
    perijove: int | None = None
    target: str = ""
    frames: int | None = None
    filters: tuple[str, ...] = ()
    start_time_utc: str = ""
    exposure_ms: float | None = None
    tdi_stages: int | None = None
    bit_mode: str = ""
    missing: str | None = None
    problem: str | None = None
    raw: str = ""
    metadata: str = ""

    @property
    def ok(self) -> bool:
        """Readable (a missing half is reported, not an error)."""
        return self.problem is None


def load_metadata(entry: ProductEntry) -> ProductMeta:
    """The metadata of an entry, parsed, without reading its pixels."""
    if entry.metadata is None:
        raise _missing_metadata_error(entry)
    data = read_bytes(entry.metadata, limit=MAX_METADATA_BYTES)
    reader = read_pds3_label if entry.kind == "pds3" else read_site_json
    return parse_metadata(reader(data, path=entry.metadata), path=str(entry.metadata))


def _summary(meta: ProductMeta | None, entry: ProductEntry, *, problem: str | None = None) -> ProductSummary:
    base = ProductSummary(product_id=entry.product_id, missing=entry.missing,
                          problem=problem or entry.problem, raw=str(entry.raw or ""),
                          metadata=str(entry.metadata or ""))
    if meta is None:
        return base
    return replace(base, perijove=meta.perijove, target=meta.target, frames=meta.n_frames,
                   filters=meta.filters, start_time_utc=meta.start_time_utc, exposure_ms=meta.exposure_ms,
                   tdi_stages=meta.tdi_stages, bit_mode=meta.bit_mode)


def summarize_entry(entry: ProductEntry) -> ProductSummary:
    """Decode the entry (complete ones fully, pixels included) and report it; never raises."""
    if entry.problem is not None:
        return _summary(None, entry)
    try:
        if entry.complete:
            return _summary(load_entry(entry).meta, entry)
        return _summary(load_metadata(entry) if entry.metadata is not None else None, entry)
    except JunoprocError as err:
        return _summary(None, entry, problem=err.one_line())


def summarize(path: str | Path) -> list[ProductSummary]:
    """What ``path`` holds, for ``junoproc info``.

    A single product (a file, or a zip holding one product) must load: its one-line error
    is raised otherwise. A folder (or a zip of several products) lists every product, with
    what is missing or broken as rows; an empty folder is an error.
    """
    p = Path(path)
    entries = find_products(p) if p.is_dir() or p.suffix.lower() == ".zip" else []
    if not p.is_dir() and len({e.product_id for e in entries}) <= 1:
        raw = load(p)
        m = raw.meta
        return [ProductSummary(product_id=m.product_id, perijove=m.perijove, target=m.target,
                               frames=m.n_frames, filters=m.filters, start_time_utc=m.start_time_utc,
                               exposure_ms=m.exposure_ms, tdi_stages=m.tdi_stages, bit_mode=m.bit_mode,
                               raw=raw.raw_path, metadata=m.metadata_path)]
    if not entries:
        raise ProductError("no JunoCam product found", path=p,
                           hint="expected JNCE_*-raw.png with its -Metadata.json, zips of them, "
                                "or PDS3 .IMG/.LBL")
    return [summarize_entry(e) for e in entries]
