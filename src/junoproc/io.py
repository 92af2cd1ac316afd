"""Every file junoproc writes or reads back: PNG, TIFF (8/16-bit, float32), linear maps, sidecars.

All writes are atomic: the bytes go to a temporary file in the destination folder, which is
then renamed over the destination (:func:`os.replace`), so a reader never sees a half-written
file and an interrupted run leaves the previous file intact.

Conventions
-----------
- Images are in **RGB(A) order** in memory (OpenCV's BGR is an implementation detail here).
- A *linear map* ``FILE.tif`` is float32, one sample plane per band in the order of
  ``band_names`` (planar TIFF, one page), NaN where nothing was seen. Its band names live
  in the TIFF ImageDescription as JSON, so the file describes itself.
- Backplanes of a linear map go to ``FILE-backplanes.tif`` (float32, named planes, the
  names in the ImageDescription JSON). Integer and boolean planes are stored as float32
  (exact for |v| < 2**24) and restored to their dtype on reading.
- The sidecar of ``FILE.ext`` is ``FILE.json`` (:func:`sidecar_path`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import IO, Any

import cv2
import numpy as np
import tifffile

from .errors import OutputError

__all__ = [
    "LinearMap",
    "backplanes_path",
    "read_image",
    "read_linear_map",
    "read_sidecar",
    "read_tiff",
    "sidecar_path",
    "to_jsonable",
    "update_sidecar",
    "write_linear_map",
    "write_png",
    "write_sidecar",
    "write_tiff",
]

#: ImageDescription "kind" of the TIFFs junoproc writes for maps and backplanes.
LINEAR_MAP_KIND = "junoproc.linear_map"
BACKPLANES_KIND = "junoproc.backplanes"
_FORMAT_VERSION = 1
#: Dtypes a backplane is restored to after its float32 round trip (exact below 2**24).
_EXACT_IN_FLOAT32 = {"bool", "uint8", "int8", "uint16", "int16", "float32"}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, eq=False)
class LinearMap:
    """A map-projected stack of calibrated linear values, plus its geometry.

    ``data`` is float32 ``(H, W, B)`` with one band per entry of ``band_names`` (in that
    order, e.g. ``("BLUE", "GREEN", "RED")`` or ``("METHANE",)``), NaN where nothing was
    seen. ``backplanes`` maps a plane name (``lat_centric_deg``, ``lon_east_deg``,
    ``incidence_deg``, ``emission_deg``, ``phase_deg``, ``resolution_km_per_px``,
    ``weight``, ...) to an ``(H, W)`` array on the same pixel grid. ``sidecar`` is the
    JSON-able description (map definition, product, units, ...).

    The arrays are not copied; treat them as read-only.
    """

    data: np.ndarray
    band_names: tuple[str, ...]
    backplanes: Mapping[str, np.ndarray] = field(default_factory=dict)
    sidecar: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = self.data
        if not isinstance(data, np.ndarray) or data.dtype != np.float32:
            raise OutputError(
                f"linear map data must be a float32 numpy array, got "
                f"{getattr(data, 'dtype', type(data).__name__)}",
                hint="convert with .astype(np.float32)",
            )
        if data.ndim == 2:
            data = data[:, :, None]
            object.__setattr__(self, "data", data)
        if data.ndim != 3:
            raise OutputError(f"linear map data must be (H, W, B), got shape {data.shape}")
        names = tuple(str(n) for n in self.band_names)
        object.__setattr__(self, "band_names", names)
        if len(names) != data.shape[2]:
            raise OutputError(
                f"{len(names)} band names {names} for {data.shape[2]} bands",
                hint="give one name per band, in band order",
            )
        if len(set(names)) != len(names):
            raise OutputError(f"duplicate band names {names}")
        planes = dict(self.backplanes or {})
        for name, plane in planes.items():
            if np.shape(plane) != data.shape[:2]:
                raise OutputError(
                    f"backplane {name!r} has shape {np.shape(plane)}, map is {data.shape[:2]}",
                    hint="backplanes must share the map's pixel grid",
                )
        object.__setattr__(self, "backplanes", MappingProxyType(planes))
        object.__setattr__(self, "sidecar", MappingProxyType(dict(self.sidecar or {})))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the pixel grid."""
        return (int(self.data.shape[0]), int(self.data.shape[1]))

    def band(self, name: str) -> np.ndarray:
        """The ``(H, W)`` plane of band ``name`` (a view)."""
        try:
            return self.data[:, :, self.band_names.index(name)]
        except ValueError:
            raise OutputError(f"no band {name!r} in {self.band_names}") from None


# --------------------------------------------------------------------------- paths


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of ``path``: the same name with suffix ``.json`` (map.tif -> map.json).

    A path that already ends in ``.json`` is returned unchanged.
    """
    p = Path(path)
    return p if p.suffix.lower() == ".json" else p.with_suffix(".json")


def backplanes_path(path: str | os.PathLike[str]) -> Path:
    """The backplanes file of a linear map: ``FILE.tif`` -> ``FILE-backplanes.tif``."""
    p = Path(path)
    return p.with_name(f"{p.stem}-backplanes{p.suffix or '.tif'}")


# --------------------------------------------------------------------------- atomic writes


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Run ``write(fh)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError("output folder does not exist", path=folder, hint="create it first")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)  # reopened by name: writers such as tifffile want a named file object
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"cannot write: {err.strerror or err}", path=dest) from err
        raise
    return dest


def _atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    return _atomic_write(path, lambda fh: fh.write(payload))


# --------------------------------------------------------------------------- images


def _check_image(image: np.ndarray, dtypes: tuple[type, ...], what: str, path: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise OutputError(f"{what} wants a numpy array, got {type(image).__name__}", path=path)
    if image.dtype.type not in dtypes:
        raise OutputError(
            f"{what} wants {'/'.join(np.dtype(d).name for d in dtypes)}, got {image.dtype}",
            path=path,
            hint="scale and convert the image first",
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise OutputError(
            f"{what} wants (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, got shape {image.shape}",
            path=path,
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise OutputError(f"{what}: empty image {image.shape}", path=path)
    return image


def write_png(path: str | os.PathLike[str], image: np.ndarray, *, compression: int = 3) -> Path:
    """Write a uint8 or uint16 image, ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA.

    ``compression`` is the zlib level 0-9 (3: small files, fast). Returns the path written.
    """
    image = _check_image(image, (np.uint8, np.uint16), "PNG", path)
    if image.ndim == 3:
        code = cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        image = cv2.cvtColor(np.ascontiguousarray(image), code)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(compression)])
    if not ok:  # pragma: no cover - OpenCV refuses only on absurd input
        raise OutputError("PNG encoding failed", path=Path(path))
    return _atomic_write_bytes(path, buf.tobytes())


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    description: str | Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> Path:
    """Write a TIFF: uint8/uint16 grey, RGB or RGBA (unassociated alpha), or float32.

    float32 arrays ``(H, W)`` or ``(H, W, B)`` are written as one page with ``B`` planar
    sample planes (``minisblack``), NaN preserved. ``description`` (a string, or a mapping
    written as JSON) goes into the ImageDescription tag. ``compression``: ``None`` (fast,
    default) or ``"zlib"`` (smaller, several times slower).
    """
    if not isinstance(array, np.ndarray):
        raise OutputError(f"TIFF wants a numpy array, got {type(array).__name__}", path=Path(path))
    if isinstance(description, Mapping):
        description = json.dumps(to_jsonable(description), allow_nan=False)
    kwargs: dict[str, Any] = {"metadata": None, "description": description}
    if compression is not None:
        kwargs["compression"] = compression
    if array.dtype == np.float32:
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
            data: np.ndarray = array.reshape(array.shape[:2])
            kwargs.update(photometric="minisblack")
        elif array.ndim == 3 and array.shape[2] >= 1:
            data = np.ascontiguousarray(np.moveaxis(array, 2, 0))
            kwargs.update(photometric="minisblack", planarconfig="separate")
        else:
            raise OutputError(f"float32 TIFF wants (H, W) or (H, W, B), got {array.shape}", path=Path(path))
    else:
        data = _check_image(array, (np.uint8, np.uint16), "TIFF", path)
        if data.ndim == 2:
            kwargs.update(photometric="minisblack")
        else:
            kwargs.update(photometric="rgb", planarconfig="contig")
            if data.shape[2] == 4:
                kwargs.update(extrasamples=("unassalpha",))
    return _atomic_write(path, lambda fh: tifffile.imwrite(fh, data, **kwargs))


def read_tiff(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Read a TIFF written by :func:`write_tiff`: ``(array, description)``.

    Planar float stacks come back as ``(H, W, B)``; RGB(A) as ``(H, W, 3|4)``.
    """
    p = Path(path)
    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            description = page.description or None
            array = tif.asarray()
            planar_separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            samples = int(page.samplesperpixel)
    except FileNotFoundError:
        raise OutputError("file not found", path=p) from None
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise OutputError(f"not a readable TIFF ({err})", path=p) from err
    if planar_separate and samples > 1 and array.ndim == 3:
        array = np.ascontiguousarray(np.moveaxis(array, 0, 2))
    return array, description


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG (RGB/RGBA order, dtype kept) or TIFF written by this module."""
    p = Path(path)
    if p.suffix.lower() in (".tif", ".tiff"):
        return read_tiff(p)[0]
    if not p.is_file():
        raise OutputError("file not found", path=p)
    image = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OutputError("not a readable image", path=p)
    if image.ndim == 3:
        code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
        image = cv2.cvtColor(image, code)
    return image


# --------------------------------------------------------------------------- linear maps


def write_linear_map(
    path: str | os.PathLike[str],
    data: np.ndarray | LinearMap,
    band_names: Sequence[str] | None = None,
    backplanes: Mapping[str, np.ndarray] | None = None,
    *,
    sidecar: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> list[Path]:
    """Write a linear map ``FILE.tif`` (+ ``FILE-backplanes.tif``, + ``FILE.json``).

    ``data`` is float32 ``(H, W, B)`` (or a :class:`LinearMap`, whose names, backplanes and
    sidecar are used unless given here). Bands are written in the order of ``band_names``;
    NaN is preserved. Backplanes are written when there are any, the sidecar when it is
    given (or the LinearMap has one). Returns the paths written, map first.
    """
    if isinstance(data, LinearMap):
        lm = data
        band_names = lm.band_names if band_names is None else band_names
        backplanes = dict(lm.backplanes) if backplanes is None else backplanes
        sidecar = dict(lm.sidecar) if sidecar is None else sidecar
        data = lm.data
    if band_names is None:
        raise OutputError("band names are required", path=Path(path), hint="pass band_names=(...)")
    lm = LinearMap(np.asarray(data), tuple(band_names), backplanes or {}, sidecar or {})
    p = Path(path)
    written = [
        write_tiff(
            p,
            lm.data,
            description={
                "kind": LINEAR_MAP_KIND,
                "version": _FORMAT_VERSION,
                "band_names": list(lm.band_names),
                "map_shape": list(lm.data.shape),
            },
            compression=compression,
        )
    ]
    if lm.backplanes:
        names = list(lm.backplanes)
        dtypes = [np.asarray(lm.backplanes[n]).dtype.name for n in names]
        planar = np.empty((len(names), *lm.shape), np.float32)
        for i, name in enumerate(names):
            planar[i] = lm.backplanes[name]
        stack = np.moveaxis(planar, 0, 2)  # (H, W, B) view; write_tiff stores it planar, no copy
        written.append(
            write_tiff(
                backplanes_path(p),
                stack,
                description={
                    "kind": BACKPLANES_KIND,
                    "version": _FORMAT_VERSION,
                    "plane_names": names,
                    "dtypes": dtypes,
                    "map_shape": list(stack.shape),
                },
                compression=compression,
            )
        )
    if lm.sidecar:
        written.append(write_sidecar(p, lm.sidecar))
    return written


def _parse_description(description: str | None, kind: str, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(description or "")
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise OutputError(
            f"not a junoproc {kind.split('.')[-1].replace('_', ' ')} TIFF (no {kind} description)",
            path=path,
            hint="write it with junoproc.io.write_linear_map",
        )
    return meta


def read_linear_map(path: str | os.PathLike[str]) -> LinearMap:
    """Read ``FILE.tif`` and, when present, ``FILE-backplanes.tif`` and ``FILE.json``."""
    p = Path(path)
    array, description = read_tiff(p)
    meta = _parse_description(description, LINEAR_MAP_KIND, p)
    names = tuple(meta["band_names"])
    data = np.asarray(array, np.float32).reshape(meta["map_shape"])
    planes: dict[str, np.ndarray] = {}
    bpath = backplanes_path(p)
    if bpath.is_file():
        barray, bdesc = read_tiff(bpath)
        bmeta = _parse_description(bdesc, BACKPLANES_KIND, bpath)
        barray = np.asarray(barray, np.float32).reshape(bmeta["map_shape"])
        for i, (name, dtype) in enumerate(zip(bmeta["plane_names"], bmeta["dtypes"], strict=True)):
            plane = np.ascontiguousarray(barray[:, :, i])
            planes[name] = plane.astype(dtype) if dtype in _EXACT_IN_FLOAT32 else plane
    spath = sidecar_path(p)
    side = read_sidecar(spath) if spath.is_file() else {}
    return LinearMap(data, names, planes, side)


# --------------------------------------------------------------------------- sidecars


def to_jsonable(value: Any) -> Any:
    """Convert ``value`` to plain JSON types.

    numpy scalars -> Python numbers, arrays -> nested lists, tuples/sets -> lists, paths
    -> strings, dataclasses -> dicts, enums -> their value, dates -> ISO strings, mapping
    keys -> strings. Non-finite floats become ``None`` (strict JSON has no NaN).
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    raise OutputError(f"cannot write {type(value).__name__} to JSON", hint="convert it to a dict")


def write_sidecar(path: str | os.PathLike[str], mapping: Mapping[str, Any]) -> Path:
    """Write ``mapping`` as JSON to the sidecar of ``path`` (atomic). Returns the sidecar path."""
    dest = sidecar_path(path)
    text = json.dumps(to_jsonable(mapping), indent=2, allow_nan=False, ensure_ascii=False)
    return _atomic_write_bytes(dest, (text + "\n").encode("utf-8"))


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the sidecar of ``path`` (``FILE.ext`` -> ``FILE.json``, or the .json itself)."""
    src = sidecar_path(path)
    try:
        text = src.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OutputError("sidecar not found", path=src) from None
    except OSError as err:
        raise OutputError(f"cannot read sidecar: {err.strerror or err}", path=src) from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise OutputError(f"sidecar is not valid JSON ({err.msg}, line {err.lineno})", path=src) from err
    if not isinstance(value, dict):
        raise OutputError("sidecar is not a JSON object", path=src)
    return value


def update_sidecar(path: str | os.PathLike[str], mapping: Mapping[str, Any]) -> Path:
    """Merge ``mapping`` into the sidecar of ``path`` (top-level keys replaced), atomically."""
    src = sidecar_path(path)
    current = read_sidecar(src) if src.is_file() else {}
    current.update(to_jsonable(mapping))
    return write_sidecar(src, current)
