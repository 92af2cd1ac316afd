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
  (exact for |v| < 2**24) and restored to their dtype on reading. The file holds the
  bounding box of the footprint only (``crop`` in the description; outside it every plane
  is NaN or 0, restored on reading), and leaves out the latitude/longitude planes that an
  equirectangular map definition gives exactly (``derived_planes``; recomputed on reading)
  and those computed from other planes by a fixed formula (``computed_planes``: the
  planetographic latitude, west longitude and resolution of the maps junoproc projects;
  recomputed on reading, bit for bit; the PJ44 44C00032 perspective map's file: 27.8 ->
  19.9 MB).
- Float TIFFs are compressed with the floating-point predictor (TIFF predictor 3,
  libtiff's byte-plane layout, done here when ``imagecodecs`` is missing): the PJ44 native
  map's backplanes shrink ~9x (499 -> 55 MB before cropping). The map ``FILE.tif`` uses
  deflate (level 1), which every TIFF reader decodes. The backplanes ``FILE-backplanes.tif``
  use Zstandard (TIFF compression 50000, level 1) by default: 2.3x less CPU to write than
  deflate at +3 % size (PJ44 44C00032's two maps: 1.12 -> 0.50 s, 44.8 -> 46.0 MB). Readers:
  libtiff >= 4.0.10 built with zstd (e.g. Pillow's wheels), GDAL >= 2.3, tifffile with
  imagecodecs; not older libtiffs or ImageJ's own reader. ``write_linear_map(...,
  backplanes_compression="deflate")`` writes them for any reader.
- A linear map whose sidecar holds an equirectangular map definition carries GeoTIFF tags
  (ModelPixelScale, ModelTiepoint, GeoKeyDirectory): a geographic CRS on a user-defined
  datum of the body (the PCK radii): an ellipsoid for planetographic latitude, a sphere of
  the equatorial radius for planetocentric latitude (the IAU convention: a geographic
  CRS's latitude is geodetic on its ellipsoid), east longitude, pixel-is-area.
- The sidecar of ``FILE.ext`` is ``FILE.json`` (:func:`sidecar_path`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import enum
import json
import math
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import IO, Any

import cv2
import numpy as np
import tifffile

from .errors import OutputError
from .runtime import workers

__all__ = [
    "LinearMap",
    "backplanes_path",
    "geotiff_tags",
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
#: Deflate level of compressed TIFFs (1: with the predictor within 20% of level 6, 2x faster).
DEFLATE_LEVEL = 1
#: Zstandard level of ``"zstd"`` TIFFs (1: 4x faster than deflate level 1, same size).
ZSTD_LEVEL = 1
#: Compression of a linear map's backplanes file (see the module notes on readers).
BACKPLANES_COMPRESSION = "zstd"
#: TIFF compression codes junoproc writes (tifffile's names).
_TIFF_COMPRESSION = {"zlib": 8, "deflate": 8, "zstd": 50000}
#: Rows per strip of compressed TIFFs.
ROWS_PER_STRIP = 64
#: Backplanes an equirectangular map definition gives exactly (not stored).
DERIVED_PLANES = ("lat_centric_deg", "lat_graphic_deg", "lon_east_deg", "lon_west_deg")
#: The files of a linear map (:func:`write_linear_map`'s ``parts``): FILE.tif,
#: FILE-backplanes.tif, FILE.json.
LINEAR_MAP_PARTS = ("map", "backplanes", "sidecar")
#: Backplanes computed from others by a fixed formula (:func:`computed_backplane`): name ->
#: the planes it is computed from. A map's sidecar lists those its maker computed that way
#: (``computed_backplanes``: name -> the formula's constants); the file leaves them out.
COMPUTED_BACKPLANES: dict[str, tuple[str, ...]] = {
    "lat_graphic_deg": ("lat_centric_deg", "lon_east_deg"),
    "lon_west_deg": ("lon_east_deg",),
    "resolution_km_per_px": ("range_km",),
}
_PREDICTOR_FLOAT = 3


# --------------------------------------------------------------------------- float predictor


def _floatpred_encode(data: np.ndarray, axis: int = -2, out: Any = None) -> np.ndarray:
    """TIFF predictor 3 (libtiff ``fpDiff``) of one sample per pixel: each row's float32
    bytes regrouped into byte planes, most significant first, then byte-wise differences."""
    a = np.asarray(data)
    if a.dtype.itemsize != 4 or (a.ndim >= 1 and axis == -2 and a.shape[-1] != 1):
        raise OutputError(f"floating-point predictor: float32, one sample per pixel only "
                          f"({a.dtype}, {a.shape})")
    n = int(np.prod(a.shape[axis:]))
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).reshape(-1, n)
    planes = np.empty((bits.shape[0], 4, n), np.uint8)
    for i, shift in enumerate((24, 16, 8, 0)):  # byte planes by shifts: no strided byte gathers
        np.right_shift(bits, shift, out=planes[:, i], casting="unsafe")
    planes = planes.reshape(-1, 4 * n)
    diff = planes.copy()
    diff[:, 1:] -= planes[:, :-1]  # uint8: modulo 256
    return diff


def _floatpred_decode(data: np.ndarray, axis: int = -2, out: Any = None) -> np.ndarray:
    """Inverse of :func:`_floatpred_encode` (``data``: the decompressed bytes as float32)."""
    a = np.asarray(data)
    n = int(np.prod(a.shape[axis:]))
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1, 4 * n)
    planes = np.cumsum(raw, axis=1, dtype=np.uint8).reshape(-1, 4, n)
    bits = planes[:, 0].astype(np.uint32) << 24
    for i, shift in ((1, 16), (2, 8), (3, 0)):
        bits |= planes[:, i].astype(np.uint32) << shift
    values = bits.view(np.float32).reshape(a.shape).astype(a.dtype, copy=False)
    if isinstance(out, np.ndarray) and out.flags.writeable:
        out[...] = values
        return out
    return values


def _io_workers() -> int:
    """Threads for (de)compressing TIFF strips: :func:`junoproc.runtime.workers`, at most 4
    (or as :func:`codec_threads` says)."""
    return _CODEC_THREADS.get() or min(4, workers())


def _zstd_available() -> bool:
    """tifffile encodes Zstandard through ``imagecodecs`` (a dependency; checked anyway)."""
    try:
        tifffile.TIFF.COMPRESSORS[_TIFF_COMPRESSION["zstd"]]
        return True
    except (KeyError, ImportError):  # pragma: no cover - imagecodecs without zstd
        return False


def _float_predictor_available() -> bool:
    """tifffile encodes predictor 3 with ``imagecodecs``; without it, lend it ours."""
    try:
        tifffile.TIFF.PREDICTORS[_PREDICTOR_FLOAT]
        tifffile.TIFF.UNPREDICTORS[_PREDICTOR_FLOAT]
        return True
    except KeyError:
        pass
    enc = getattr(tifffile.TIFF.PREDICTORS, "_codecs", None)
    dec = getattr(tifffile.TIFF.UNPREDICTORS, "_codecs", None)
    if isinstance(enc, dict) and isinstance(dec, dict):
        enc[_PREDICTOR_FLOAT] = _floatpred_encode
        dec[_PREDICTOR_FLOAT] = _floatpred_decode
        return True
    return False  # pragma: no cover - a tifffile without the table: plain deflate


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


#: False inside :func:`unsynced_writes`: files are not fsynced one by one.
_FSYNC_EACH = contextvars.ContextVar("junoproc_io_fsync_each", default=True)


#: Set inside :func:`codec_threads`.
_CODEC_THREADS: contextvars.ContextVar[int | None] = contextvars.ContextVar("junoproc_io_codec_threads",
                                                                          default=None)


@contextmanager
def codec_threads(n: int) -> Iterator[None]:
    """TIFF strips in this block are (de)compressed on ``n`` threads (1: in the caller's
    own thread), for a write that runs beside other work which already uses the cores."""
    token = _CODEC_THREADS.set(max(1, int(n)))
    try:
        yield
    finally:
        _CODEC_THREADS.reset(token)


@contextmanager
def unsynced_writes() -> Iterator[None]:
    """Writes in this block are still atomic (temporary name, rename) but not fsynced one
    by one: for files in a hidden work folder that the caller renames into place whole
    (the build's products), where a per-file fsync only waits for the disk."""
    token = _FSYNC_EACH.set(False)
    try:
        yield
    finally:
        _FSYNC_EACH.reset(token)


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
            if _FSYNC_EACH.get():
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


def _tiff_kwargs(path: str | os.PathLike[str], compression: str | None, floats: bool,
                 description: str | Mapping[str, Any] | None,
                 extratags: Sequence[tuple[int, str, int, Any, bool]]) -> dict[str, Any]:
    """tifffile's arguments for :func:`write_tiff`'s ``compression``, ``description`` and
    ``extratags`` (``floats``: float32 data, which gets the floating-point predictor)."""
    if compression not in (None, "zlib", "deflate", "zstd"):
        raise OutputError(f"unknown TIFF compression {compression!r}", path=Path(path),
                          hint="None, 'zlib', 'deflate' or 'zstd'")
    if compression == "zstd" and not _zstd_available():
        compression = "deflate"
    if isinstance(description, Mapping):
        description = json.dumps(to_jsonable(description), allow_nan=False)
    kwargs: dict[str, Any] = {"metadata": None, "description": description}
    if extratags:
        kwargs["extratags"] = list(extratags)
    if compression == "zlib":
        kwargs["compression"] = "zlib"
    elif compression in ("deflate", "zstd"):
        kwargs.update(compression="zlib" if compression == "deflate" else "zstd",
                      compressionargs={"level": DEFLATE_LEVEL if compression == "deflate" else ZSTD_LEVEL},
                      rowsperstrip=ROWS_PER_STRIP, maxworkers=_io_workers())
        if floats and _float_predictor_available():
            kwargs["predictor"] = _PREDICTOR_FLOAT
    return kwargs


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    description: str | Mapping[str, Any] | None = None,
    compression: str | None = None,
    extratags: Sequence[tuple[int, str, int, Any, bool]] = (),
) -> Path:
    """Write a TIFF: uint8/uint16 grey, RGB or RGBA (unassociated alpha), or float32.

    float32 arrays ``(H, W)`` or ``(H, W, B)`` are written as one page with ``B`` planar
    sample planes (``minisblack``), NaN preserved. ``description`` (a string, or a mapping
    written as JSON) goes into the ImageDescription tag. ``compression``: ``None`` (fast,
    default), ``"zlib"`` (deflate, level 6), ``"deflate"`` (level :data:`DEFLATE_LEVEL`) or
    ``"zstd"`` (Zstandard, level :data:`ZSTD_LEVEL`; deflate when this tifffile cannot),
    the last two with the floating-point predictor for float32. ``extratags``: tifffile's
    ``(code, dtype, count, value, writeonce)`` (GeoTIFF tags).
    """
    if not isinstance(array, np.ndarray):
        raise OutputError(f"TIFF wants a numpy array, got {type(array).__name__}", path=Path(path))
    kwargs = _tiff_kwargs(path, compression, array.dtype == np.float32, description, extratags)
    if array.dtype == np.float32:
        if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
            data: np.ndarray = array.reshape(array.shape[:2])
            kwargs.update(photometric="minisblack")
        elif array.ndim == 3 and array.shape[2] >= 1:
            if "compressionargs" in kwargs:  # strips encoded here, without a planar copy
                return _write_float_planes(path, [array[:, :, i] for i in range(array.shape[2])], kwargs)
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


def _write_float_planes(path: str | os.PathLike[str], planes: Sequence[np.ndarray],
                        kwargs: Mapping[str, Any]) -> Path:
    """A float32 TIFF of ``planes`` (2-D arrays of one shape, any real dtype and strides:
    each strip is converted to float32 as it is encoded) as one page of planar samples,
    compressed as ``kwargs`` (:func:`_tiff_kwargs` with a compression level) says.

    The strips are encoded here (predictor, then compressor: tifffile's own codecs, so the
    file is the one tifffile writes), on threads, a few strips ahead of the writer, and
    handed to tifffile as bytes. Given the array, tifffile first gathers the planes into
    one contiguous (B, H, W) copy: for PJ44's methane perspective backplanes 650 MB, which
    took 1.3-2.1 s on the development machine, longer than encoding them."""
    h, w = planes[0].shape
    compressor = tifffile.TIFF.COMPRESSORS[_TIFF_COMPRESSION[str(kwargs["compression"])]]
    level = int(kwargs["compressionargs"]["level"])
    predictor = tifffile.TIFF.PREDICTORS[_PREDICTOR_FLOAT] if "predictor" in kwargs else None
    jobs = [(plane, r) for plane in planes for r in range(0, h, ROWS_PER_STRIP)]

    def encode(job: tuple[np.ndarray, int]) -> bytes:
        plane, r = job
        strip = np.ascontiguousarray(plane[r:r + ROWS_PER_STRIP], dtype=np.float32)
        payload = strip.reshape(strip.shape[0], w, 1)
        if predictor is not None:
            payload = predictor(payload, axis=-2)
        return bytes(compressor(payload, level=level))

    def strips(pool: ThreadPoolExecutor | None, ahead: int) -> Iterator[bytes]:
        if pool is None:
            yield from map(encode, jobs)
            return
        pending: list[Any] = []
        for job in jobs:
            pending.append(pool.submit(encode, job))
            if len(pending) > ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def write(fh: IO[bytes]) -> None:
        n = _io_workers()
        options = {k: v for k, v in kwargs.items() if k not in ("compressionargs", "maxworkers")}
        with ThreadPoolExecutor(max_workers=n) if n > 1 else contextlib.nullcontext() as pool:
            tifffile.imwrite(fh, strips(pool, 4 * n), shape=(len(planes), h, w), dtype=np.float32,
                             photometric="minisblack", planarconfig="separate", **options)

    return _atomic_write(path, write)


def read_tiff(path: str | os.PathLike[str]) -> tuple[np.ndarray, str | None]:
    """Read a TIFF written by :func:`write_tiff`: ``(array, description)``.

    Planar float stacks come back as ``(H, W, B)``; RGB(A) as ``(H, W, 3|4)``.
    """
    p = Path(path)
    _float_predictor_available()
    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            description = page.description or None
            array = tif.asarray(maxworkers=_io_workers())
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


def computed_backplane(name: str, planes: Mapping[str, np.ndarray],
                       constants: Mapping[str, Any]) -> np.ndarray:
    """Backplane ``name`` (one of :data:`COMPUTED_BACKPLANES`) from the ``planes`` it is
    computed from, float32, exactly as :func:`junoproc.projection.project` computes it:
    planetographic latitude (``constants["radii_km"]``), west longitude, or resolution =
    range x ``constants["ifov_rad"]`` (as float32)."""
    from .geometry import graphic_from_centric_lat_f32, west_from_east_lon_f32

    if name == "lat_graphic_deg":
        return graphic_from_centric_lat_f32(np.asarray(planes["lat_centric_deg"], np.float32),
                                            np.asarray(planes["lon_east_deg"], np.float32),
                                            constants["radii_km"])
    if name == "lon_west_deg":
        return west_from_east_lon_f32(np.asarray(planes["lon_east_deg"], np.float32))
    if name == "resolution_km_per_px":
        return np.multiply(np.asarray(planes["range_km"], np.float32), np.float32(constants["ifov_rad"]))
    raise ValueError(f"no formula for backplane {name!r}")


def _computed_here(lm: LinearMap, derived: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """The backplanes of ``lm`` its sidecar says were computed by formula, that its other
    stored planes give back bit for bit (checked: a map edited or resampled since keeps
    its planes): name -> the formula's constants."""
    listed = lm.sidecar.get("computed_backplanes")
    if not isinstance(listed, Mapping):
        return {}
    out = {}
    for name, constants in listed.items():
        inputs = COMPUTED_BACKPLANES.get(name, ())
        if (name in lm.backplanes and name not in derived and inputs and isinstance(constants, Mapping)
                and all(k in lm.backplanes and k not in derived for k in inputs)):
            try:
                again = computed_backplane(name, lm.backplanes, constants)
            except (KeyError, TypeError, ValueError):
                continue
            if np.array_equal(again, np.asarray(lm.backplanes[name]), equal_nan=True):
                out[name] = dict(constants)
    return out


def write_linear_map(
    path: str | os.PathLike[str],
    data: np.ndarray | LinearMap,
    band_names: Sequence[str] | None = None,
    backplanes: Mapping[str, np.ndarray] | None = None,
    *,
    sidecar: Mapping[str, Any] | None = None,
    compression: str | None = "deflate",
    backplanes_compression: str | None = BACKPLANES_COMPRESSION,
    parts: Collection[str] = LINEAR_MAP_PARTS,
) -> list[Path]:
    """Write a linear map ``FILE.tif`` (+ ``FILE-backplanes.tif``, + ``FILE.json``).

    ``data`` is float32 ``(H, W, B)`` (or a :class:`LinearMap`, whose names, backplanes and
    sidecar are used unless given here). Bands are written in the order of ``band_names``;
    NaN is preserved. Backplanes are written when there are any (cropped to the footprint,
    without the coordinates an equirectangular map definition gives), the sidecar when it
    is given (or the LinearMap has one); GeoTIFF tags when the sidecar's ``map`` is
    equirectangular. ``compression`` (the map) and ``backplanes_compression``: see
    :func:`write_tiff` (defaults: deflate for the map, Zstandard for the backplanes, both
    with the floating-point predictor; the module notes say which readers take which).
    ``parts``: which of the files to write (:data:`LINEAR_MAP_PARTS`; two writers may
    share one map's files). Returns the paths written, map first.
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
    map_def = lm.sidecar.get("map") if isinstance(lm.sidecar.get("map"), Mapping) else None
    written = []
    if "map" in parts:
        written.append(write_tiff(
            p,
            lm.data,
            description={
                "kind": LINEAR_MAP_KIND,
                "version": _FORMAT_VERSION,
                "band_names": list(lm.band_names),
                "map_shape": list(lm.data.shape),
            },
            compression=compression,
            extratags=geotiff_tags(map_def) if map_def else (),
        ))
    if lm.backplanes and "backplanes" in parts:
        derived = [n for n in DERIVED_PLANES if n in lm.backplanes] \
            if map_def and map_def.get("projection") == "equirectangular" else []
        computed = _computed_here(lm, derived)
        names = [n for n in lm.backplanes if n not in derived and n not in computed]
        dtypes = [np.asarray(lm.backplanes[n]).dtype.name for n in names]
        (r0, r1, c0, c1), fills = _footprint_box([np.asarray(lm.backplanes[n]) for n in names], lm.shape)
        planes = [np.asarray(lm.backplanes[name])[r0:r1, c0:c1] for name in names]
        written.append(
            _write_planes(
                backplanes_path(p),
                planes,
                description={
                    "kind": BACKPLANES_KIND,
                    "version": _FORMAT_VERSION,
                    "plane_names": names,
                    "dtypes": dtypes,
                    "map_shape": [*lm.shape, len(names)],
                    "crop": {"row": r0, "column": c0, "rows": r1 - r0, "columns": c1 - c0},
                    "fills": fills,
                    "derived_planes": derived,
                    "computed_planes": computed,
                },
                compression=backplanes_compression,
            )
        )
    if lm.sidecar and "sidecar" in parts:
        written.append(write_sidecar(p, lm.sidecar))
    return written


def _write_planes(path: str | os.PathLike[str], planes: Sequence[np.ndarray], *,
                  description: Mapping[str, Any], compression: str | None) -> Path:
    """:func:`write_tiff` of the (H, W, B) float32 stack of 2-D ``planes`` (any real dtype),
    without making the stack when the strips are compressed (:func:`_write_float_planes`)."""
    kwargs = _tiff_kwargs(path, compression, True, description, ())
    if "compressionargs" in kwargs:
        return _write_float_planes(path, planes, kwargs)
    stack = np.empty((len(planes), *planes[0].shape), np.float32)
    for i, plane in enumerate(planes):
        stack[i] = plane
    return write_tiff(path, np.moveaxis(stack, 0, 2), description=description, compression=compression)


def _footprint_box(planes: Sequence[np.ndarray], shape: tuple[int, int]
                   ) -> tuple[tuple[int, int, int, int], list[str]]:
    """Smallest box (r0, r1, c0, c1) outside which every plane is constant NaN or 0, and the
    fill of each ("nan" or "zero"); the whole map when no such box exists."""
    h, w = shape
    fills = ["nan" if p.dtype.kind == "f" and np.isnan(p).any() else "zero" for p in planes]
    busy = np.zeros(shape, bool)
    for plane, fill in zip(planes, fills, strict=True):
        busy |= ~np.isnan(plane) if fill == "nan" else plane != 0
    rows = np.flatnonzero(busy.any(axis=1))
    cols = np.flatnonzero(busy.any(axis=0))
    if not len(rows):
        return (0, min(h, 1), 0, min(w, 1)), fills
    return (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1), fills


def geotiff_tags(map_def: Mapping[str, Any]) -> list[tuple[int, str, int, Any, bool]]:
    """GeoTIFF tags (tifffile ``extratags``) placing an equirectangular map definition: a
    geographic CRS on the body's user-defined datum, east longitude, pixel-is-area. Other
    projections get none (their placement is the sidecar's map definition)."""
    if map_def.get("projection") != "equirectangular":
        return []
    ppd = float(map_def["px_per_deg"])
    a_km, _, c_km = (float(r) for r in map_def["radii_km"])
    graphic = map_def.get("latitude") == "planetographic"
    minor_km = c_km if graphic else a_km
    body = str(map_def.get("target", "body")).title()
    citation = (f"{body} {'planetographic (ellipsoid' if graphic else 'planetocentric (sphere'} from the PCK"
                f" radii), east longitude, {map_def.get('body_frame', '')}|")
    keys = [  # (key, location, count, value); location 34736: GeoDoubleParams, 34737: GeoAsciiParams
        (1024, 0, 1, 2),           # GTModelType: geographic
        (1025, 0, 1, 1),           # GTRasterType: pixel is area
        (2048, 0, 1, 32767),       # GeographicType: user-defined
        (2049, 34737, len(citation), 0),  # GeogCitation
        (2050, 0, 1, 32767),       # GeogGeodeticDatum: user-defined
        (2051, 0, 1, 8901),        # GeogPrimeMeridian: the body's longitude 0
        (2054, 0, 1, 9102),        # GeogAngularUnits: degree
        (2056, 0, 1, 32767),       # GeogEllipsoid: user-defined
        (2057, 34736, 1, 0),       # GeogSemiMajorAxis (m)
        (2058, 34736, 1, 1),       # GeogSemiMinorAxis (m)
    ]
    directory = [1, 1, 0, len(keys)] + [v for key in keys for v in key]
    return [
        (33550, "d", 3, (1.0 / ppd, 1.0 / ppd, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, float(map_def["lon_left_east_deg"]),
                         float(map_def["lat_top_deg"]), 0.0), True),  # ModelTiepoint
        (34735, "H", len(directory), tuple(directory), True),  # GeoKeyDirectory
        (34736, "d", 2, (a_km * 1000.0, minor_km * 1000.0), True),  # GeoDoubleParams
        (34737, "s", 0, citation, True),  # GeoAsciiParams
    ]


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


def _read_tiff_samples(path: Path, samples: Sequence[int]) -> np.ndarray:
    """The sample planes ``samples`` of a planar float TIFF written by :func:`write_tiff`,
    as ``(len(samples), H, W)``: only their strips are read and decoded."""
    from concurrent.futures import ThreadPoolExecutor

    _float_predictor_available()
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            n_samples = int(page.samplesperpixel)
            separate = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
            if not separate or n_samples < 2:  # one plane, or interleaved: read it all
                array = tif.asarray(maxworkers=_io_workers())
                array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
                return np.ascontiguousarray(array[list(samples)])
            offsets, counts = page.dataoffsets, page.databytecounts
            per_plane = len(offsets) // n_samples
            height, width = (int(v) for v in page.shape[-2:])
            out = np.empty((len(samples), height, width), page.dtype)
            jobs = [(k, s * per_plane + i) for k, s in enumerate(samples) for i in range(per_plane)]
            fh = tif.filehandle
            blobs = []
            for _, index in jobs:  # one sequential pass over the file
                fh.seek(offsets[index])
                blobs.append(fh.read(counts[index]))

            def decode(job: int) -> None:
                k, index = jobs[job]
                segment, where, shape = page.decode(blobs[job], index)
                row = int(where[2])
                rows = min(int(shape[1]), height - row)
                out[k, row:row + rows] = np.asarray(segment).reshape(shape[1], shape[2])[:rows]

            with ThreadPoolExecutor(max_workers=_io_workers()) as pool:
                list(pool.map(decode, range(len(jobs))))
            return out
    except FileNotFoundError:
        raise OutputError("file not found", path=path) from None
    except (tifffile.TiffFileError, ValueError, OSError) as err:
        raise OutputError(f"not a readable TIFF ({err})", path=path) from err


def read_linear_map(path: str | os.PathLike[str], *,
                    backplanes: Sequence[str] | None = None) -> LinearMap:
    """Read ``FILE.tif`` and, when present, ``FILE-backplanes.tif`` and ``FILE.json``.

    ``backplanes``: the names of the planes wanted (those the file lacks are left out);
    only their strips are read and decompressed. None: every plane.
    """
    p = Path(path)
    array, description = read_tiff(p)
    meta = _parse_description(description, LINEAR_MAP_KIND, p)
    names = tuple(meta["band_names"])
    data = np.asarray(array, np.float32).reshape(meta["map_shape"])
    planes: dict[str, np.ndarray] = {}
    spath = sidecar_path(p)
    side = read_sidecar(spath) if spath.is_file() else {}
    bpath = backplanes_path(p)
    wanted = None if backplanes is None else set(backplanes)
    if bpath.is_file() and (wanted is None or wanted):
        if wanted is None:
            barray, bdesc = read_tiff(bpath)
        else:
            try:
                with tifffile.TiffFile(bpath) as tif:
                    bdesc = tif.pages.first.description or None
            except (tifffile.TiffFileError, ValueError, OSError) as err:
                raise OutputError(f"not a readable TIFF ({err})", path=bpath) from err
        bmeta = _parse_description(bdesc, BACKPLANES_KIND, bpath)
        names_b = bmeta["plane_names"]
        computed = {name: constants for name, constants in (bmeta.get("computed_planes") or {}).items()
                    if wanted is None or name in wanted}
        stored = list(range(len(names_b)))
        if wanted is not None:
            needed = wanted | {k for name in computed for k in COMPUTED_BACKPLANES.get(name, ())}
            stored = [i for i, name in enumerate(names_b) if name in needed]
            barray = np.moveaxis(_read_tiff_samples(bpath, stored), 0, 2)
        crop = bmeta.get("crop")
        h, w = (int(v) for v in bmeta["map_shape"][:2])
        if crop:
            shape = (int(crop["rows"]), int(crop["columns"]), len(names_b))
            r0, c0 = int(crop["row"]), int(crop["column"])
        else:  # format 1 files: the whole map
            shape, r0, c0 = (h, w, len(names_b)), 0, 0
        barray = np.asarray(barray, np.float32).reshape(shape[:2] + (len(stored),))
        fills = bmeta.get("fills") or ["nan"] * len(names_b)
        for k, i in enumerate(stored):
            name, dtype, fill = names_b[i], bmeta["dtypes"][i], fills[i]
            plane = np.full((h, w), np.nan if fill == "nan" else 0.0, np.float32)
            plane[r0:r0 + shape[0], c0:c0 + shape[1]] = barray[:, :, k]
            planes[name] = plane.astype(dtype) if dtype in _EXACT_IN_FLOAT32 else plane
        for name, constants in computed.items():
            planes[name] = computed_backplane(name, planes, constants)
        if wanted is not None:  # planes read only to compute others
            planes = {name: plane for name, plane in planes.items() if name in wanted}
        derived = [n for n in bmeta.get("derived_planes") or [] if wanted is None or n in wanted]
        if derived:
            if not isinstance(side.get("map"), Mapping):
                raise OutputError("backplanes leave the coordinates to the map definition, but the sidecar "
                                  "has none", path=spath, hint="keep FILE.json beside FILE.tif")
            from .projection import map_coordinates, map_grid_from_dict

            coords = map_coordinates(map_grid_from_dict(side["map"]))
            planes.update({name: coords[name] for name in derived})
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
