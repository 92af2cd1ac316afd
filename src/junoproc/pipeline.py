"""``build``: every product of a folder, end to end, in parallel processes.

Per product, in a worker: decode -> calibrate -> kernels -> pointing -> geometry ->
projection(s) -> linear maps written. Then, in the build process, ONE colour balance per
perijove and filter set (:func:`enhance.colour_balance_from` over those products' maps,
as soon as that group's products are projected), so that all images of a perijove share
one colour and tone scale. Then, in a worker again: enhancement with that balance (of
the maps saved uncompressed beside the linear TIFFs, not decoded again) -> composites
and sidecar written (the balance recorded in it). Products without a CK are solved
jointly between the two worker phases (one spin axis per pass, finished products of a
resumed build included). Each product is written into a hidden temporary folder and renamed into
place when its composites and sidecar are there, so an interrupted build leaves no
half-written product and a second run skips what is finished (unless ``force``); hidden
folders left by a killed run are removed by the next one. One failing product is
reported and the others go on. SPICE is not thread-safe: workers are processes, each
loading its own kernels and using its share of the cores: the cores divided among the
workers busy at the moment (one thread each when all are busy, every core for a worker
alone at the tail). Biggest work first: see :func:`_run`.

Map projections other than ``perspective`` are made on one lattice per perijove (fixed
pixels per degree, edges on multiples of the pixel size) and cropped to each image's
footprint, so the per-folder mosaics only paste and blend. Per folder: a contact sheet of
every composite and, per filter set (RGB, METHANE), one cylindrical (equirectangular)
and one polar mosaic (:func:`projection.perijove_mosaics`), made in a worker as soon as
that filter set's products are finished. :class:`BuildReport` ``phases`` times the build
process's own (serial) work.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from . import __version__
from .enhance import ENHANCE_BACKPLANES
from .errors import JunoprocError
from .runtime import workers

#: Projections made by default for every product.
DEFAULT_PROJECTIONS = ("perspective", "equirectangular")
#: Name of the per-folder configuration file.
CONFIG_NAME = "junoproc.toml"
#: Prefix of the hidden folder a product is written into before its final rename.
PARTIAL_TAG = ".partial-"
#: Thread counts of libraries a worker loads (BLAS stays on one thread: see runtime).
THREAD_ENV_VARS = ("OMP_NUM_THREADS",)
#: Subfolder of a product's hidden work folder with what its enhancement reads of its maps,
#: uncompressed (``.npy``): the worker that finishes the product maps it instead of
#: decoding the linear TIFFs again (removed before the folder's rename).
SCRATCH_DIR = ".enhance-input"
#: The backplanes :func:`projection.perijove_mosaics` uses.
MOSAIC_BACKPLANES = ("weight", "incidence_deg", "emission_deg")


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build`` needs; CLI flags > config file > these defaults."""

    out_dir: str = "out"
    kernels: str | None = None
    projections: tuple[str, ...] = DEFAULT_PROJECTIONS
    preset: str = "enhanced"
    #: ``key=value`` changes to the preset (``enhance --set``), e.g. ``weights.BLUE=1.33``
    enhance_overrides: tuple[str, ...] = ()
    jobs: int = 0  # 0: the number of cores
    force: bool = False
    mosaic: bool = True
    debug: bool = False
    #: Map projections (all but ``perspective``) are made at this resolution on one lattice
    #: (edges on multiples of 1 / resolution degrees), cropped to each image's footprint, so
    #: every product of a perijove pastes onto the same grid for the mosaics.
    map_resolution_px_per_deg: float = 10.0
    #: the folder being built (``build`` sets it): with no ``kernels``, ``$JUNOPROC_KERNELS``
    #: or config, a ``kernels/`` folder beside it is used (:func:`kernels.resolve_kernel_dir`)
    data_folder: str | None = None

    def resolved_jobs(self) -> int:
        return self.jobs if self.jobs > 0 else max(1, os.cpu_count() or 1)


def load_config(folder: str | Path) -> dict[str, Any]:
    """``[build]`` table of ``junoproc.toml`` in the folder, else of the user config."""
    import tomllib

    candidates = [Path(folder) / CONFIG_NAME,
                  Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "junoproc"
                  / "config.toml"]
    for path in candidates:
        if path.is_file():
            try:
                with open(path, "rb") as fh:
                    data = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise JunoprocError(f"cannot read config: {err}", path=path,
                                    hint="fix the TOML syntax or delete the file") from None
            table = dict(data.get("build", {}))
            table["_config_path"] = str(path)
            return table
    return {}


def options_with_config(options: BuildOptions, config: Mapping[str, Any],
                        explicit: set[str]) -> BuildOptions:
    """Config values for the fields the user did not set explicitly on the command line."""
    known = {f for f in BuildOptions.__dataclass_fields__}
    updates: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in known:
            raise JunoprocError(f"unknown build option {key!r} in config",
                                path=config.get("_config_path"),
                                hint=f"valid keys: {', '.join(sorted(known))}")
        if key in explicit:
            continue
        updates[key] = tuple(value) if key in ("projections", "enhance_overrides") else value
    return replace(options, **updates)


@dataclass(frozen=True)
class ProductResult:
    """What happened to one product."""

    product_id: str
    status: str  # "done", "skipped", "failed", "incomplete"
    message: str = ""
    limb_rms_px: float | None = None
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    #: CPU seconds of the worker process per stage (all its threads): on a loaded machine
    #: the honest measure of the work, where wall time also counts waiting for a core.
    stage_cpu_seconds: Mapping[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    peak_rss_mb: float | None = None


@dataclass(frozen=True)
class BuildReport:
    results: tuple[ProductResult, ...]
    out_dir: str
    seconds: float
    extras: tuple[str, ...] = ()
    #: the build process's own (serial) work by phase, ``{phase: {"wall_s", "cpu_s"}}``:
    #: ``joint_solve``, ``balance``, ``mosaics``, ``contact_sheet`` (see :class:`_Phases`)
    phases: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every product with a raw image is built (metadata-only downloads are
        reported, not counted as failures)."""
        return all(r.status in ("done", "skipped") for r in self.results
                   if r.status != "incomplete")

    def table(self) -> str:
        """Product, status, limb residual, time, outputs (or the reason it failed)."""
        rows = [("product", "status", "limb rms px", "time s", "outputs / message")]
        for r in self.results:
            rms = f"{r.limb_rms_px:.2f}" if r.limb_rms_px is not None else "-"
            if r.status in ("failed", "incomplete"):
                detail = r.message
            else:
                pngs = [o for o in r.outputs if o.endswith(".png")]
                detail = f"{len(r.outputs)} files in {Path(self.out_dir) / r.product_id}: " \
                         + ", ".join(o.removeprefix(r.product_id + "-") for o in pngs)
            time_s = f"{r.seconds:.1f}" if r.status == "done" or r.seconds else "-"
            rows.append((r.product_id, r.status, rms, time_s, detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
                 for row in rows]
        n = {s: sum(r.status == s for r in self.results)
             for s in ("done", "skipped", "failed", "incomplete")}
        lines.append(f"{len(self.results)} product(s): {n['done']} built, {n['skipped']} already "
                     f"built, {n['failed']} failed, {n['incomplete']} incomplete downloads; "
                     f"{self.seconds:.1f} s")
        if self.phases:
            lines.append("build process: " + ", ".join(
                f"{name.replace('_', ' ')} {t['wall_s']:.1f} s ({t['cpu_s']:.1f} s CPU)"
                for name, t in self.phases.items()))
        return "\n".join(lines)


class _Phases:
    """Wall and CPU seconds of the build process's own work by phase (workers wait on it
    when it is on the critical path: the joint solve and the balance; the mosaics and
    contact sheet run after the last product)."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            t = self.seconds.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            t["wall_s"] = round(t["wall_s"] + time.perf_counter() - t0, 3)
            t["cpu_s"] = round(t["cpu_s"] + time.process_time() - c0, 3)


# ---------------------------------------------------------------------------------------
# one product
# ---------------------------------------------------------------------------------------
#: ``on_stage(product_id, stage, step, n_steps)``: called as each stage starts.
StageCallback = Callable[[str, str, int, int], None]


def product_stages(options: BuildOptions) -> tuple[str, ...]:
    """The stage names of one product, in order (their timings are in the sidecar).

    ``decode`` ... ``write_linear`` run in a worker; ``balance`` (one colour balance per
    perijove and filter set) in the build process once that group's products are projected;
    then ``read_linear`` ... ``write`` in a worker again (``read_linear`` maps the arrays
    enhancement reads, saved uncompressed by ``write_linear``; no time when the maps are
    still in memory: :func:`process_product`, whose ``write_linear`` runs beside the
    enhancement instead, in :func:`finish_product`).

    Without a CK, ``build`` detects the limb (``limbs``) in a worker, solves the pointing of
    all such products of the run jointly (``pointing``: one spin axis per pass,
    :func:`pointing.solve_from_limbs`, its time split evenly) in the build process, then
    aligns the bands (``align_bands``) in a worker again, after decoding and calibrating the
    image once more (added to ``decode`` and ``calibrate``). Alone (:func:`process_product`)
    or with a CK, ``pointing`` does all three and ``limbs`` and ``align_bands`` are 0."""
    return ("decode", "calibrate", "kernels", "limbs", "pointing", "align_bands", "geometry",
            *(f"project_{p}" for p in options.projections), "write_linear", "balance",
            "read_linear", *(f"enhance_{p}" for p in options.projections), "write")


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children waited for (a projection's forked
    copies: see :func:`projection.project`)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


class _Stages:
    """Wall and CPU seconds per stage (CPU: this process and its forked copies), and the
    progress callback."""

    def __init__(self, product_id: str, names: Sequence[str], on_stage: StageCallback | None,
                 wall: Mapping[str, float] | None = None, cpu: Mapping[str, float] | None = None):
        self.product_id, self.names, self.on_stage = product_id, tuple(names), on_stage
        self.wall: dict[str, float] = dict(wall or {})
        self.cpu: dict[str, float] = dict(cpu or {})

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.on_stage is not None:
            self.on_stage(self.product_id, name, self.names.index(name), len(self.names))
        t0, c0 = time.perf_counter(), _cpu_seconds()
        value = fn()
        self.wall[name] = round(time.perf_counter() - t0, 3)
        self.cpu[name] = round(_cpu_seconds() - c0, 3)
        return value

    def again(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn`` timed and added to stage ``name`` (done before), without a progress event."""
        t0, c0 = time.perf_counter(), _cpu_seconds()
        value = fn()
        self.wall[name] = round(self.wall.get(name, 0.0) + time.perf_counter() - t0, 3)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + _cpu_seconds() - c0, 3)
        return value

    def complete(self) -> None:
        """Stages this product did not run separately count 0 s (see :func:`product_stages`)."""
        for name in self.names:
            self.wall.setdefault(name, 0.0)
            self.cpu.setdefault(name, 0.0)


@dataclass(frozen=True)
class Detected:
    """A product without a CK after its first worker phase: its limb, waiting for the joint
    pointing solve of the run (:func:`pointing.solve_from_limbs`) in the build process."""

    product_id: str
    #: :class:`pointing.LimbObservation` (no pixels)
    observation: Any
    #: the :class:`kernels.KernelSet` selected for it (loaded for the joint solve)
    kernel_set: Any
    stage_seconds: Mapping[str, float]
    stage_cpu_seconds: Mapping[str, float]
    #: a product an earlier run finished, re-detected (:func:`detect_built`) only so that
    #: its limb takes part in its pass's joint solve; nothing of it is rewritten
    built: bool = False
    #: (perijove, filter set): the products sharing one colour balance
    group: tuple[int | None, str] = (None, "")


def detect_built(entry: Any, options: BuildOptions, *,
                 on_stage: StageCallback | None = None) -> Detected | str | None:
    """A finished product's limb again (decode, calibrate, kernels, :func:`pointing.detect_limbs`;
    nothing written), for the joint solve of a resumed build: the spin axis of a pass is
    fixed by every image of the pass without a CK, built or not (44M00040 alone is refused
    as ambiguous). None when it has a CK after all; a one-line reason when it cannot be
    read any more (it then does not take part)."""
    from . import kernels, pointing, products
    from .calibrate import calibrate

    try:
        raw = products.load_entry(entry) if isinstance(entry, products.ProductEntry) else products.load(entry)
        cal = calibrate(raw)
        kdir, ksource = _kernel_dir(entry, options)
        kset = kernels.select_kernels_for(raw.meta, kdir, source=ksource)
        if kset.ck_covered:
            return None
        t0, c0 = time.perf_counter(), time.process_time()
        with kernels.furnished(kset):
            obs = pointing.detect_limbs(cal)
        return Detected(raw.meta.product_id, obs, kset, {"limbs": round(time.perf_counter() - t0, 3)},
                        {"limbs": round(time.process_time() - c0, 3)}, built=True)
    except JunoprocError as err:
        return err.one_line()


def with_band_alignment(image: Any, sol: Any) -> Any:
    """``sol`` (a joint solve's, made without the pixels) with the per-band boresight
    corrections measured on ``image`` (:func:`pointing.align_bands`), as
    :func:`pointing.solve_pointing` applies them: only when some pair of bands has at least
    3 textured windows. The limb residuals stay those of the IK's band boresights."""
    from . import pointing

    if image.meta.n_filters < 2 or not sum(sol.n_points_by_band.values()):
        return sol
    found = pointing.align_bands(image, sol, weights={b: float(n) for b, n in sol.n_points_by_band.items()})
    if not any(n >= 3 for n in found.n_windows_by_pair.values()):
        return replace(sol, band_alignment=found.to_dict(),
                       notes=(*sol.notes, "band alignment: too few textured windows; the IK's band "
                                          "boresights kept"))
    boresight = tuple((b, tuple(float(v) for v in w)) for b, w in found.boresight_rad_by_band.items())
    return replace(sol, attitude=replace(sol.attitude, band_boresight_rad=boresight),
                   band_alignment=found.to_dict())


def map_grid(geometry: Any, projection_name: str, options: BuildOptions) -> Any:
    """The grid a build uses for ``projection_name`` (None: :func:`projection.project`'s own).

    Equirectangular: the image's footprint at ``options.map_resolution_px_per_deg``,
    widened to the perijove lattice (edges on multiples of the pixel size, in System III
    west longitude and planetocentric latitude as everywhere in the build), so the maps of
    all images paste onto one grid. Polar and orthographic: the fixed resolution, their own
    extent. Perspective: native.
    """
    from . import projection

    if projection_name == "perspective":
        return None
    ppd = float(options.map_resolution_px_per_deg)
    if projection_name != "equirectangular":
        return projection.make_grid(geometry, projection_name, resolution_px_per_deg=ppd)
    fit = projection.make_grid(geometry, "equirectangular", resolution_px_per_deg=ppd)
    p = fit.params
    left_k = math.floor(float(p["lon_left_east_deg"]) * ppd + 1e-6)
    right_k = math.ceil((float(p["lon_left_east_deg"]) + fit.width / ppd) * ppd - 1e-6)
    n_lon = int(round(360 * ppd))
    if right_k - left_k >= n_lon:
        # around a pole make_grid keeps all 360 deg, cut in the night side: keep its cut
        right_k = left_k + n_lon
    bottom_k = max(-int(round(90 * ppd)), math.floor(float(p["lat_bottom_deg"]) * ppd + 1e-6))
    top_k = min(int(round(90 * ppd)), math.ceil(float(p["lat_top_deg"]) * ppd - 1e-6))
    lon_max_west = float(-left_k / ppd) % 360.0
    bounds = (lon_max_west - (right_k - left_k) / ppd, lon_max_west, bottom_k / ppd, top_k / ppd)
    return projection.make_grid(geometry, "equirectangular", bounds=bounds, lon="west", lat="centric",
                                resolution_px_per_deg=ppd)


@dataclass(frozen=True)
class Projected:
    """A product half built: its linear maps written into its hidden work folder (or kept
    in ``maps``, written by :func:`finish_product` beside the enhancement), waiting
    for the colour balance of its perijove and filter set (``group``)."""

    product_id: str
    work_dir: str
    group: tuple[int | None, str]
    #: projection -> file name of its linear map in ``work_dir`` (once written)
    map_files: Mapping[str, str]
    #: the sidecar so far (inputs, kernels, time model, pointing, maps, calibration)
    sidecar: Mapping[str, Any]
    limb_rms_px: float | None
    stage_seconds: Mapping[str, float]
    stage_cpu_seconds: Mapping[str, float]
    peak_rss_mb: float | None
    #: the maps the shared balance is measured on, decimated to the sampling stride that
    #: enhancement measures levels at (~250,000 pixels each), as picklable
    #: ``(data, band_names, backplanes, sidecar)``: see :meth:`balance_linear_maps`
    balance_maps: tuple[tuple[Any, tuple[str, ...], dict[str, Any], dict[str, Any]], ...] = ()
    #: the full maps, kept only when the same process finishes the product
    maps: Mapping[str, Any] | None = None
    #: projection -> band names of its map saved in ``work_dir/SCRATCH_DIR`` (see
    #: :func:`_save_for_enhancement`); empty: the linear TIFFs are read back
    scratch_bands: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def balance_linear_maps(self) -> list[Any]:
        from .io import LinearMap

        return [LinearMap(*parts) for parts in self.balance_maps]

    def to_finish(self) -> Projected:
        """What a worker needs to finish it (no maps: they are read back from the folder)."""
        return replace(self, balance_maps=(), maps=None)


def _decimated(m: Any) -> tuple[Any, tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """A LinearMap sampled every ``s``-th pixel (``s`` as enhancement picks its level
    samples), as ``(data, band_names, backplanes, sidecar)``."""
    import numpy as np

    h, w = m.data.shape[:2]
    s = max(1, int(math.sqrt(h * w / 250_000)))
    planes = {k: np.ascontiguousarray(np.asarray(m.backplanes[k])[::s, ::s])
              for k in ENHANCE_BACKPLANES if k in m.backplanes}
    return np.ascontiguousarray(m.data[::s, ::s]), tuple(m.band_names), planes, dict(m.sidecar)


def _kernel_dir(entry: Any, options: BuildOptions) -> tuple[Path, Any]:
    """:func:`kernels.resolve_kernel_dir` for a product of the build: the data it looks
    beside is the folder being built, else the product's own file."""
    from . import kernels

    raw = getattr(entry, "raw", None)
    data = options.data_folder or (raw.path if raw is not None else str(entry))
    return kernels.resolve_kernel_dir(options.kernels, data=data)


def _save_for_enhancement(work_dir: Path, name: str, m: Any) -> None:
    """The arrays enhancement reads of map ``name`` as ``.npy`` in ``work_dir/SCRATCH_DIR``."""
    import numpy as np

    folder = work_dir / SCRATCH_DIR
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{name}.data.npy", m.data)
    for key in ENHANCE_BACKPLANES:
        if key in m.backplanes:
            np.save(folder / f"{name}.{key}.npy", np.asarray(m.backplanes[key]))


def _load_for_enhancement(work_dir: Path, name: str, band_names: Sequence[str],
                          sidecar: Mapping[str, Any]) -> Any:
    """The LinearMap :func:`_save_for_enhancement` saved, memory-mapped copy-on-write."""
    import numpy as np

    from .io import LinearMap

    folder = work_dir / SCRATCH_DIR
    planes = {key: np.load(folder / f"{name}.{key}.npy", mmap_mode="c") for key in ENHANCE_BACKPLANES
              if (folder / f"{name}.{key}.npy").is_file()}
    return LinearMap(np.load(folder / f"{name}.data.npy", mmap_mode="c"), tuple(band_names), planes,
                     dict(sidecar))


def _finished(final_dir: Path, product_id: str) -> bool:
    """A product folder counts as built when its sidecar reads back and every output it
    lists is there and not empty (a power cut after the rename may leave empty files)."""
    try:
        side = json.loads((final_dir / f"{product_id}.json").read_text())
        outputs = list(side["outputs"])
        return all((final_dir / name).stat().st_size > 0 for name in outputs)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _failed(product_id: str, err: BaseException, options: BuildOptions, stages: _Stages,
            seconds: float) -> ProductResult:
    if isinstance(err, JunoprocError):
        message = err.one_line()
    else:  # a bug: keep the batch going, say where
        detail = traceback.format_exc() if options.debug else f"{type(err).__name__}: {err}"
        message = f"internal error: {detail}".strip()
    return ProductResult(product_id, "failed", message, seconds=seconds,
                         stage_seconds=stages.wall, stage_cpu_seconds=stages.cpu)


def project_product(entry: Any, options: BuildOptions, *, on_stage: StageCallback | None = None,
                    keep_maps: bool = False, joint: bool = False, detected: Detected | None = None,
                    solution: Any = None) -> Projected | Detected | ProductResult:
    """First half of a product: decode ... projection, linear maps written into the hidden
    ``OUT/.<PRODUCT_ID>.partial-<pid>`` folder. Returns a :class:`Projected` or the failed
    :class:`ProductResult` (folder removed). ``keep_maps``: the same process finishes it;
    the maps stay in ``maps``, not yet written (:func:`finish_product` writes them while
    it enhances them: 0.3 s less for a PJ44 image on 2 cores).

    ``joint``: a product without a CK stops after its limb detection and returns a
    :class:`Detected` for the joint solve; called again with that ``detected`` and the
    joint ``solution`` it goes on from there (band alignment, geometry, projections). A
    product with a CK is solved and projected at once, as without ``joint``."""
    from . import geometry, io, kernels, pointing, products, projection
    from .calibrate import calibrate

    t_start = time.perf_counter()
    product_id = getattr(entry, "product_id", str(entry))
    out_root = Path(options.out_dir)
    stages = _Stages(product_id, product_stages(options), on_stage,
                     *((detected.stage_seconds, detected.stage_cpu_seconds) if detected else ()))
    work_dir = out_root / f".{product_id}{PARTIAL_TAG}{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    kept = False
    try:
        def decode() -> Any:
            return products.load_entry(entry) if isinstance(entry, products.ProductEntry) \
                else products.load(entry)

        with ExitStack() as spice:  # the kernels, loaded for the block
            if detected is not None:  # second phase: the image again (cheaper than shipping it)
                raw = stages.again("decode", decode)
                cal = stages.again("calibrate", lambda: calibrate(raw))
                kset = stages.again("kernels", lambda: spice.enter_context(
                    kernels.furnished(detected.kernel_set)))
            else:
                raw = stages.run("decode", decode)
                kdir, ksource = _kernel_dir(entry, options)

                def load_kernels() -> Any:
                    """Kernels chosen and loaded (SPICE's only user now) while the image calibrates."""
                    chosen = kernels.select_kernels_for(raw.meta, kdir, source=ksource)
                    return spice.enter_context(kernels.furnished(chosen))

                done = _concurrent_stages(stages, [("cal", _stage_task("calibrate", lambda: calibrate(raw))),
                                                   ("kset", _stage_task("kernels", load_kernels))],
                                          ["calibrate", "kernels"])
                cal, kset = done["cal"], done["kset"]
            meta = raw.meta
            if detected is not None:
                solution = stages.run("align_bands", lambda: with_band_alignment(cal, solution))
            elif joint and not kset.ck_covered:
                obs = stages.run("limbs", lambda: pointing.detect_limbs(cal))
                return Detected(product_id, obs, kset, stages.wall, stages.cpu,
                                group=(meta.perijove, projection.filter_set(meta.filters)))
            else:
                ck = geometry.CkAttitude() if kset.ck_covered else None
                solution = stages.run("pointing", lambda: pointing.solve_pointing(cal, ck=ck))
            geom = stages.run("geometry", lambda: geometry.image_geometry(
                meta, solution.attitude, timing=solution.timing))
            maps = {}
            for name in options.projections:
                def _project(name: str = name) -> Any:
                    return projection.project(cal, geom, projection=name,
                                              grid=map_grid(geom, name, options))
                maps[name] = stages.run(f"project_{name}", _project)
        files = {name: f"{product_id}-{name}-linear.tif" for name in maps}
        if not keep_maps:  # else finish_product writes them beside the enhancement
            stages.run("write_linear", lambda: _write_linear_maps(work_dir, files, maps, scratch=True))
        # the balance is measured on one projection per product: the equirectangular maps
        # sample the surface alike in every image (else the first projection made)
        measured = "equirectangular" if "equirectangular" in maps else next(iter(maps))
        sidecar = {
            "junoproc_version": __version__,
            "product_id": product_id,
            "inputs": {"raw": raw.raw_path, "metadata": meta.metadata_path},
            "label": {k: v for k, v in meta.raw_label.items() if isinstance(v, (str, int, float, list))},
            "kernels": kset.describe(),
            "time_model": asdict(solution.timing),
            "pointing": solution.to_json(),
            # the products whose limbs fixed this image's spin axis together (empty with a CK)
            "joint": dict(getattr(solution, "joint", {}) or {}),
            "maps": {name: dict(m.sidecar) for name, m in maps.items()},
            "calibration": {"steps": list(cal.steps), "units": cal.units},
        }
        result = Projected(
            product_id, str(work_dir), (meta.perijove, projection.filter_set(maps[measured].band_names)),
            files, io.to_jsonable(sidecar), getattr(solution, "rms_px", None), stages.wall, stages.cpu,
            _peak_rss_mb(), balance_maps=(_decimated(maps[measured]),),
            maps=maps if keep_maps else None,
            scratch_bands={} if keep_maps else {name: tuple(m.band_names) for name, m in maps.items()})
        kept = True
        return result
    except Exception as err:
        return _failed(product_id, err, options, stages, time.perf_counter() - t_start)
    finally:
        if not kept:
            shutil.rmtree(work_dir, ignore_errors=True)


def _write_linear_maps(work_dir: Path, files: Mapping[str, str], maps: Mapping[str, Any], *,
                       scratch: bool, parts: Collection[str] | None = None) -> None:
    """The linear maps (TIFF, backplanes, JSON) into ``work_dir``, not fsynced: the folder
    is renamed whole (see :func:`finish_product`). ``scratch``: also the arrays another
    worker's enhancement reads (:func:`_save_for_enhancement`). ``parts``: only those
    files (:data:`io.LINEAR_MAP_PARTS`), compressed in this thread alone: a task beside
    others that keep the cores busy (and its CPU time is then its own)."""
    from . import io

    # (context variables: set in the thread that writes)
    with io.unsynced_writes(), io.codec_threads(1) if parts is not None else nullcontext():
        for name, linear in maps.items():
            io.write_linear_map(work_dir / files[name], linear, parts=parts or io.LINEAR_MAP_PARTS)
            if scratch:
                _save_for_enhancement(work_dir, name, linear)


def shared_balance(members: Sequence[Projected], options: BuildOptions) -> dict[str, Any]:
    """ONE colour balance for products of one perijove and filter set
    (:func:`enhance.colour_balance_from` over their maps), as recorded in each sidecar's
    ``colour_balance``: ``balance`` (None when it cannot be measured: each image is then
    balanced alone, ``note`` says why), ``products``, ``measured_on``, ``seconds``."""
    from .enhance import colour_balance_from

    t0, c0 = time.perf_counter(), time.process_time()
    perijove, fset = members[0].group
    info: dict[str, Any] = {"perijove": perijove, "filter_set": fset,
                            "products": sorted(p.product_id for p in members),
                            "measured_on": sorted({m[3].get("map", {}).get("projection", "?")
                                                   for p in members for m in p.balance_maps})}
    try:
        bal = colour_balance_from([m for p in members for m in p.balance_linear_maps()],
                                  preset=options.preset,
                                  overrides=list(options.enhance_overrides) or None, perijove=perijove)
        info["balance"] = bal.to_dict()
    except JunoprocError as err:
        info.update(balance=None, note=f"each image balanced alone: {err.one_line()}")
    info.update(seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
    return info


#: a task of :func:`_concurrent_stages`: ``task(started) -> (value, {stage: (wall, thread CPU)})``
StageTask = Callable[[Callable[[str], None]], tuple[Any, dict[str, tuple[float, float]]]]


def _stage_task(stage: str, fn: Callable[[], Any]) -> StageTask:
    """``fn`` as a :func:`_concurrent_stages` task that is all of stage ``stage``."""
    def task(started: Callable[[str], None]) -> tuple[Any, dict[str, tuple[float, float]]]:
        started(stage)
        t0, c0 = time.perf_counter(), time.thread_time()
        value = fn()
        return value, {stage: (time.perf_counter() - t0, time.thread_time() - c0)}

    return task


def _concurrent_stages(stages: _Stages, tasks: Sequence[tuple[str, StageTask]],
                       names: Sequence[str]) -> dict[str, Any]:
    """``{key: task(started)[0]}`` for the ``(key, task)`` pairs, on threads when this
    process may use several cores (one map's enhancement is mostly single-threaded numpy,
    which releases the interpreter lock: PJ44 44C00032's two composites took 0.65-0.69 s
    instead of 0.77-0.98 s; the linear maps' compression beside them). Each task also
    returns its own (wall, thread CPU) per stage; the block's wall and CPU (this process's,
    OpenCV's and the codecs' threads included) are shared among ``names`` in proportion to
    them, so the stages still add up to the product's time (the split is approximate: work a
    task hands to :func:`runtime.thread_map`'s pool is not in its thread's CPU time). A task
    calls ``started(stage)`` as it starts each stage: progress events go out once per stage,
    in the order of ``names``."""
    import threading

    lock, emitted = threading.Lock(), [0]

    def started(name: str) -> None:
        """Progress: stage ``name`` started (and the stages before it in ``names``, once)."""
        with lock:
            upto = names.index(name) + 1
            for stage in names[emitted[0]:upto]:
                if stages.on_stage is not None:
                    stages.on_stage(stages.product_id, stage, stages.names.index(stage), len(stages.names))
            emitted[0] = max(emitted[0], upto)

    t0, c0 = time.perf_counter(), _cpu_seconds()
    n = min(len(tasks), workers())
    if n > 1:
        with ThreadPoolExecutor(n) as pool:
            done = list(pool.map(lambda task: task[1](started), tasks))
    else:
        done = [task(started) for _, task in tasks]
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    own = {name: [0.0, 0.0] for name in names}
    for _, times in done:
        for name, (w, c) in times.items():
            own[name][0] += w
            own[name][1] += c
    sum_w = sum(w for w, _ in own.values()) or 1.0
    sum_c = sum(c for _, c in own.values()) or 1.0
    for name, (w, c) in own.items():
        stages.wall[name] = round(wall * w / sum_w, 3)
        stages.cpu[name] = round(cpu * c / sum_c, 3)
    return {key: value for (key, _), (value, _) in zip(tasks, done, strict=True)}


def finish_product(projected: Projected, balance: Mapping[str, Any], options: BuildOptions, *,
                   on_stage: StageCallback | None = None) -> ProductResult:
    """Second half: enhancement with the shared ``balance`` (:func:`shared_balance`),
    composites and sidecar written, the hidden folder renamed into ``OUT/<PRODUCT_ID>/``
    (then the parent folder fsynced once: the files inside are not fsynced one by one)."""
    from . import io
    from .enhance import ColourBalance, enhance

    t_start = time.perf_counter()
    product_id = projected.product_id
    work_dir = Path(projected.work_dir)
    final_dir = Path(options.out_dir) / product_id
    stages = _Stages(product_id, product_stages(options), on_stage,
                     projected.stage_seconds, projected.stage_cpu_seconds)
    stages.wall["balance"] = float(balance.get("seconds", 0.0))
    stages.cpu["balance"] = float(balance.get("cpu_seconds", 0.0))
    stages.complete()
    try:
        def read_linear() -> dict[str, Any]:
            if projected.maps is not None:
                return dict(projected.maps)
            if projected.scratch_bands and (work_dir / SCRATCH_DIR).is_dir():
                return {name: _load_for_enhancement(work_dir, name, projected.scratch_bands[name],
                                                    projected.sidecar["maps"][name])
                        for name in projected.map_files}
            return {name: io.read_linear_map(work_dir / f, backplanes=ENHANCE_BACKPLANES)
                    for name, f in projected.map_files.items()}

        maps = stages.run("read_linear", read_linear)
        bal = ColourBalance.from_dict(balance["balance"]) if balance.get("balance") else None
        overrides = list(options.enhance_overrides) or None

        def enhance_and_write(name: str, linear: Any, started: Callable[[str], None]
                              ) -> tuple[Any, dict[str, tuple[float, float]]]:
            """One map's composite, enhanced and written; its (wall, thread CPU) per stage."""
            started(f"enhance_{name}")
            t0, c0 = time.perf_counter(), time.thread_time()
            comp = enhance(linear, preset=options.preset, overrides=overrides,
                           perijove=projected.group[0], balance=bal)
            t1, c1 = time.perf_counter(), time.thread_time()
            stem = work_dir / f"{product_id}-{name}"
            started("write")
            with io.unsynced_writes():  # (a context variable: set in the thread itself)
                io.write_png(f"{stem}.png", comp.image8())
                io.write_tiff(f"{stem}-16bit.tif", comp.image16())
            t2, c2 = time.perf_counter(), time.thread_time()
            return comp, {f"enhance_{name}": (t1 - t0, c1 - c0), "write": (t2 - t1, c2 - c1)}

        # maps kept in memory are written here, beside their enhancement: per map its
        # backplanes file, its composite, its map file (the largest map first)
        unwritten = projected.maps is not None
        tasks: list[tuple[str, StageTask]] = []
        for name, linear in sorted(maps.items(), key=lambda item: -item[1].data[..., 0].size):
            for part in ("backplanes", "enhance", "map") if unwritten else ("enhance",):
                if part == "enhance":
                    tasks.append((name, partial(enhance_and_write, name, linear)))
                else:
                    files = ("map", "sidecar") if part == "map" else (part,)
                    tasks.append((f"{name} {part}", _stage_task("write_linear", partial(
                        _write_linear_maps, work_dir, {name: projected.map_files[name]}, {name: linear},
                        scratch=False, parts=files))))
        names = ["write_linear"] * unwritten + [f"enhance_{name}" for name in maps]
        done = _concurrent_stages(stages, tasks, names + ["write"])
        composites = {name: done[name] for name in maps}
        del maps
        shutil.rmtree(work_dir / SCRATCH_DIR, ignore_errors=True)
        written = sorted(p.name for p in work_dir.iterdir())
        sidecar = {
            **projected.sidecar,
            "colour_balance": {k: v for k, v in balance.items() if k not in ("seconds", "cpu_seconds")},
            "enhancement": {name: c.params for name, c in composites.items()},
            "stage_seconds": stages.wall,
            "stage_cpu_seconds": stages.cpu,
            "outputs": written,
        }
        with io.unsynced_writes():
            io.write_sidecar(work_dir / f"{product_id}.json", sidecar)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(work_dir, final_dir)
        _fsync_dir(final_dir.parent)
        return ProductResult(product_id, "done", limb_rms_px=projected.limb_rms_px,
                             seconds=sum(stages.wall.values()),
                             outputs=tuple(written) + (f"{product_id}.json",),
                             stage_seconds=stages.wall, stage_cpu_seconds=stages.cpu,
                             cpu_seconds=sum(stages.cpu.values()),
                             peak_rss_mb=max(filter(None, (projected.peak_rss_mb, _peak_rss_mb())),
                                             default=None))
    except Exception as err:
        return _failed(product_id, err, options, stages,
                       sum(projected.stage_seconds.values()) + time.perf_counter() - t_start)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def process_product(entry: Any, options: BuildOptions, *,
                    on_stage: StageCallback | None = None) -> ProductResult:
    """Every stage for one product, in this process, written to ``OUT/<PRODUCT_ID>/``
    atomically; its colour balance is measured on its own maps (``build`` shares one per
    perijove and filter set). Skipped when already built (unless ``options.force``)."""
    product_id = getattr(entry, "product_id", str(entry))
    final_dir = Path(options.out_dir) / product_id
    if not options.force and _finished(final_dir, product_id):
        return ProductResult(product_id, "skipped", "already built (use --force to redo)",
                             outputs=tuple(sorted(p.name for p in final_dir.iterdir())))
    projected = project_product(entry, options, on_stage=on_stage, keep_maps=True)
    if isinstance(projected, ProductResult):
        return projected
    assert isinstance(projected, Projected)  # not ``joint``: solved right there
    try:
        if on_stage is not None:
            names = product_stages(options)
            on_stage(product_id, "balance", names.index("balance"), len(names))
        balance = shared_balance([projected], options)
    except BaseException:
        shutil.rmtree(projected.work_dir, ignore_errors=True)
        raise
    return finish_product(replace(projected, balance_maps=()), balance, options, on_stage=on_stage)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync of the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    from .runtime import helper_peak_mb

    # a projection's forked copies add their own buffers (the maps themselves are shared)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 + helper_peak_mb()


# ---------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------
_EVENTS: Any = None  # the worker's queue of progress events, set by _worker_init
_BUSY = False  # a worker interrupted (SIGINT) while idle just ignores it
_POOL_BUSY: Any = None  # the pool's count of busy workers (shared), set by _worker_init
_CORES = 1  # the cores the pool shares
_THREADS = 0  # this worker's thread limit now


def limit_threads(n: int) -> None:
    """At most ``n`` threads per numeric library in this process (geometry's per-pixel
    kernels, OpenCV, OpenMP for libraries loaded from now on; BLAS stays on one thread)."""
    from .runtime import THREADS_ENV

    os.environ[THREADS_ENV] = str(n)
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    import cv2

    cv2.setNumThreads(n)


def _on_sigint(signum: int, frame: Any) -> None:
    if _BUSY:
        raise KeyboardInterrupt


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the build process dies (even by SIGKILL),
    so no orphan goes on writing into the output folder behind the next run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        pass


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _share_cores() -> None:
    """This worker's threads: the cores divided among the workers busy now, so a worker
    alone at the tail of a build uses every core (checked as each stage starts)."""
    global _THREADS
    if _POOL_BUSY is None:
        return
    n = max(1, _CORES // max(1, int(_POOL_BUSY.value)))
    if n != _THREADS:
        limit_threads(n)
        _THREADS = n


def _worker_init(events: Any, threads: int, busy: Any = None, cores: int = 1) -> None:
    global _EVENTS, _POOL_BUSY, _CORES, _THREADS
    _EVENTS, _POOL_BUSY, _CORES, _THREADS = events, busy, cores, threads
    _die_with_parent()
    signal.signal(signal.SIGINT, _on_sigint)
    limit_threads(threads)
    # import the stages now, not inside the first product's timings
    from . import calibrate, enhance, geometry, kernels, pointing, projection  # noqa: F401


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, on_stage=...)`` with progress events to the build, SIGINT honoured."""
    global _BUSY
    events = _EVENTS

    def on_stage(product_id: str, stage: str, step: int, total: int) -> None:
        _share_cores()
        events.put((product_id, stage, step, total))

    _BUSY = True
    if _POOL_BUSY is not None:
        with _POOL_BUSY.get_lock():
            _POOL_BUSY.value += 1
    try:
        _share_cores()
        return fn(*args, on_stage=on_stage if events is not None else None)
    finally:
        _BUSY = False
        if _POOL_BUSY is not None:
            with _POOL_BUSY.get_lock():
                _POOL_BUSY.value -= 1


def _worker_detect(entry: Any, options: BuildOptions) -> Projected | Detected | ProductResult:
    return _in_worker(partial(project_product, joint=True), entry, options)


def _worker_solved(entry: Any, options: BuildOptions, detected: Detected, solution: Any
                   ) -> Projected | ProductResult:
    return _in_worker(partial(project_product, detected=detected, solution=solution), entry, options)


def _worker_detect_built(entry: Any, options: BuildOptions) -> Detected | str | None:
    return _in_worker(detect_built, entry, options)


def _worker_mosaics(out_dir: str, product_ids: Sequence[str], options: BuildOptions, label: str
                    ) -> tuple[list[str], list[str]]:
    return _in_worker(partial(make_mosaics, label=label), out_dir, product_ids, options)


def _worker_finish(projected: Projected, balance: Mapping[str, Any], options: BuildOptions) -> ProductResult:
    return _in_worker(finish_product, projected, balance, options)


def clean_partials(out_root: Path) -> list[Path]:
    """Remove the hidden ``.<PRODUCT_ID>.partial-<pid>`` folders of builds that are no
    longer running (killed, power cut); a running build's folder is left alone."""
    removed = []
    for path in out_root.glob(f".*{PARTIAL_TAG}*"):
        pid_text = path.name.rsplit(PARTIAL_TAG, 1)[-1]
        if not path.is_dir() or not pid_text.isdigit():
            continue
        if int(pid_text) != os.getpid() and _alive(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Progress:
    """tqdm bars: one for the build (images done), one per image in flight (its stages)."""

    def __init__(self, total: int, slots: int, enabled: bool):
        self.bars: dict[str, Any] = {}
        self.free = list(range(1, slots + 1))
        self.overall = None
        if enabled and total:
            from tqdm import tqdm

            self._tqdm = tqdm
            self.overall = tqdm(total=total, unit="image", desc="build", file=sys.stderr,
                                position=0, leave=True, dynamic_ncols=True)

    def stage(self, product_id: str, stage: str, step: int, total: int) -> None:
        if self.overall is None:
            return
        bar = self.bars.get(product_id)
        if bar is None:
            slot = self.free.pop(0) if self.free else len(self.bars) + 1
            bar = self._tqdm(total=total, desc=product_id, unit="stage", file=sys.stderr,
                             position=slot, leave=False, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}]")
            bar.slot = slot
            self.bars[product_id] = bar
        bar.n = step
        bar.set_description_str(f"{product_id} {stage:<24}", refresh=False)
        bar.refresh()

    def release(self, product_id: str) -> None:
        bar = self.bars.pop(product_id, None)
        if bar is not None:
            self.free.append(bar.slot)
            self.free.sort()
            bar.close()

    def projected(self, product_id: str) -> None:
        """Its bar goes until the product is finished (after its perijove's balance)."""
        if self.overall is None:
            return
        self.release(product_id)
        self.overall.set_postfix_str(f"{product_id} projected", refresh=True)

    def finished(self, result: ProductResult) -> None:
        if self.overall is None:
            return
        self.release(result.product_id)
        self.overall.set_postfix_str(f"{result.product_id} {result.status}", refresh=False)
        self.overall.update(1)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        if self.overall is not None:
            self.overall.close()


def _drain(events: Any, progress: _Progress) -> None:
    import queue

    while True:
        try:
            progress.stage(*events.get_nowait())
        except queue.Empty:
            return


@contextmanager
def _worker_pool(jobs: int) -> Iterator[tuple[ProcessPoolExecutor, Any]]:
    """Fresh (spawned) worker processes with a progress queue, each limited to its share
    of the cores. Spawned, not forked: a fork copies the parent's thread pools (OpenCV,
    BLAS) in whatever locked state they are, and a worker can hang on its first call."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    cores = _cores()
    threads = max(1, cores // jobs)
    # the libraries read these when a worker imports them, before the initializer runs
    saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    os.environ.update({var: str(threads) for var in THREAD_ENV_VARS})
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(events, threads, ctx.Value("i", 0), cores))
    try:
        yield pool, events
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        events.close()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


# ---------------------------------------------------------------------------------------
# a folder
# ---------------------------------------------------------------------------------------
def build(folder: str | Path, options: BuildOptions | None = None, *,
          progress: bool = True) -> BuildReport:
    """Every product in ``folder``: see the module docstring.

    Every product is projected first (workers); then, per perijove and filter set, one
    colour balance is measured over all their maps (here); then each product is enhanced
    with it and written (workers). A product whose group already has built products
    (an earlier, interrupted run) reuses their balance, so a perijove keeps one.

    ``progress``: tqdm bars on stderr (when it is a terminal). Ctrl-C stops the workers
    (each removes its unfinished product) and raises KeyboardInterrupt; finished products
    stay and the next run skips them. With more than one job the workers are spawned
    processes, so a script calling ``build`` must do it under
    ``if __name__ == "__main__":`` (Python's rule for spawned processes).
    """
    from . import products

    options = options or BuildOptions()
    t0 = time.perf_counter()
    phases = _Phases()
    folder = Path(folder)
    if options.data_folder is None:
        options = replace(options, data_folder=str(folder))
    entries = products.find_products(folder)
    if not entries:
        raise JunoprocError("no JunoCam products found", path=folder,
                            hint="point at a folder with *-ImageSet(.zip) / *-raw.png / *.IMG files")
    out_root = Path(options.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    clean_partials(out_root)
    results: list[ProductResult] = []
    todo, built = [], []
    for entry in entries:
        missing = getattr(entry, "missing", None)
        if missing:
            results.append(ProductResult(entry.product_id, "incomplete",
                                         f"metadata only: no {missing} (download the image set)"))
        elif not options.force and _finished(out_root / entry.product_id, entry.product_id):
            results.append(process_product(entry, options))  # "skipped", without a worker
            if _solved_without_ck(out_root / entry.product_id, entry.product_id):
                built.append(entry)
        else:
            todo.append(entry)

    jobs = min(options.resolved_jobs(), max(1, len(todo)))
    bars = _Progress(len(todo), jobs, progress and sys.stderr.isatty())
    sheet: list[str] = []

    def after_products(run_results: list[ProductResult]) -> None:
        sheet[:] = _contact_sheet(out_root, [*results, *run_results], options, phases)

    made: dict[str, list[str]] = {}
    try:
        if todo:
            skipped = [r for r in results if r.status == "skipped"]
            run_results, made = _run(todo, built, options, jobs, bars, _recorded_balances(out_root, skipped),
                                     phases, _filter_sets(out_root, skipped), after_products)
            results.extend(run_results)
        else:
            after_products([])
    finally:
        bars.close()
        clean_partials(out_root)  # what a dead worker left
    extras = (*sheet, *_other_mosaics(out_root, results, options, phases, made))
    order = {e.product_id: i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order.get(r.product_id, 0))
    return BuildReport(tuple(results), str(out_root), time.perf_counter() - t0, extras, phases.seconds)


def _solved_without_ck(final_dir: Path, product_id: str) -> bool:
    """Whether a built product's sidecar says no CK covered it (its pointing came from
    the limb, so a resumed build re-detects it for the joint solve of its pass)."""
    try:
        side = json.loads((final_dir / f"{product_id}.json").read_text())
        return side["kernels"]["ck_covered"] is False
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _recorded_balances(out_root: Path, built: Sequence[ProductResult]
                       ) -> dict[tuple[Any, str], dict[str, Any]]:
    """(perijove, filter set) -> the colour balance the built products of that group
    recorded (their sidecars' ``colour_balance``; of several, the one measured over the
    most images)."""
    found: dict[tuple[Any, str], dict[str, Any]] = {}
    for r in built:
        try:
            side = json.loads((out_root / r.product_id / f"{r.product_id}.json").read_text())
            info = dict(side["colour_balance"])
            if not info.get("balance"):
                continue
            key = (info["perijove"], info["filter_set"])
            n = int(info["balance"].get("n_images", 1))
            if key not in found or n > int(found[key]["balance"].get("n_images", 1)):
                found[key] = info
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return found


class _InProcess:
    """The executor interface run right here, one call at a time (``-j 1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args))
        return fut


def _run(todo: Sequence[Any], built: Sequence[Any], options: BuildOptions, jobs: int, bars: _Progress,
         earlier: Mapping[tuple[Any, str], Mapping[str, Any]], phases: _Phases,
         built_filter_sets: Mapping[str, str],
         after_products: Callable[[list[ProductResult]], None]
         ) -> tuple[list[ProductResult], dict[str, list[str]]]:
    """Project every product, measure one balance per group, finish every product, make
    the mosaics: ``(results, {filter set: mosaic files written})``.

    ``built``: finished products without a CK, re-detected for the joint solve.
    ``built_filter_sets``: finished product -> its filter set (its maps join the mosaic).
    Order, so that the two cores stay busy to the end: the first phase largest raw file
    first; after the joint solve, the group (perijove, filter set) with the most frames
    first and in it the image with the most frames (the largest maps) first. A group is
    balanced as soon as its own products are projected (others may still be projecting),
    and its filter set's mosaics are made in a worker as soon as its products are
    finished, while the rest go on. ``after_products(results)`` runs here once every
    product is finished (the contact sheet), beside the last mosaics."""
    from concurrent.futures.process import BrokenProcessPool

    results: list[ProductResult] = []
    waiting: list[Projected] = []  # projected, not yet handed to a worker to finish
    detected: list[Detected] = []  # limbs detected, not yet solved
    finishing: dict[Future[ProductResult], Projected] = {}
    entries = {e.product_id: e for e in todo}
    group_of: dict[str, tuple[Any, str]] = {}  # product being built -> (perijove, filter set)
    open_ids = set(entries)  # products being built, not done or failed yet
    mosaics: dict[str, list[str]] = {}
    after_done = False
    with _executor(jobs, bars) as (pool, events):
        project_fn: Callable[..., Any] = _worker_detect if events is not None else \
            partial(project_product, on_stage=bars.stage, joint=True)
        solved_fn: Callable[..., Any] = _worker_solved if events is not None else \
            partial(_project_solved, on_stage=bars.stage)
        finish_fn: Callable[..., Any] = _worker_finish if events is not None else \
            partial(finish_product, on_stage=bars.stage)
        built_fn: Callable[..., Any] = _worker_detect_built if events is not None else detect_built
        mosaic_fn: Callable[..., Any] = _worker_mosaics if events is not None else \
            (lambda *args: make_mosaics(*args[:3], label=args[3], on_stage=bars.stage))
        pending: dict[Future[Any], tuple[str, str]] = {}  # future -> (kind, product or filter set)

        def busy(*kinds: str) -> list[str]:
            return [name for kind, name in pending.values() if kind in kinds]

        try:
            for entry in sorted(todo, key=_raw_bytes, reverse=True):
                pending[pool.submit(project_fn, entry, options)] = ("detect", entry.product_id)
            for entry in built:
                pending[pool.submit(built_fn, entry, options)] = ("built", entry.product_id)
            while pending:
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                if events is not None:
                    _drain(events, bars)
                for fut in done:
                    kind, name = pending.pop(fut)
                    try:
                        out = fut.result()
                    except BrokenProcessPool:
                        out = ProductResult(name, "failed", "the worker process died "
                                            "(out of memory? try -j 1)")
                    if kind == "mosaic":
                        bars.release(f"mosaics {name}")
                        if isinstance(out, ProductResult):
                            print(f"junoproc: mosaic {name} not made: {out.message}", file=sys.stderr)
                        else:
                            mosaics[name], warnings = out
                            for line in warnings:
                                print(f"junoproc: {line}", file=sys.stderr)
                        continue
                    if kind == "built":
                        if isinstance(out, str) or isinstance(out, ProductResult):
                            print(f"junoproc: {name} (built) left out of the joint solve: "
                                  f"{getattr(out, 'message', out)}", file=sys.stderr)
                        elif out is not None:
                            detected.append(out)
                        continue
                    if isinstance(out, Detected):
                        detected.append(out)
                        group_of[name] = out.group
                        continue
                    if isinstance(out, Projected):
                        waiting.append(out)
                        group_of[name] = out.group
                        bars.projected(name)
                        continue
                    projected = finishing.pop(fut, None)
                    if projected is not None and out.status != "done":
                        shutil.rmtree(projected.work_dir, ignore_errors=True)
                    results.append(out)
                    open_ids.discard(name)
                    bars.finished(out)
                if detected and not busy("detect", "built"):
                    # every limb detected: one joint pointing solve, then on in the workers
                    solved = []
                    if not all(d.built for d in detected):
                        with phases("joint_solve"):
                            solved = solve_jointly(detected, options, on_stage=bars.stage)
                    frames = _group_frames([d for d, _ in solved if not d.built], group_of)
                    for det, sol in sorted(solved, key=frames, reverse=True):
                        if det.built:  # its axis helped; its outputs stay as they are
                            continue
                        if isinstance(sol, BaseException):
                            out = _solve_failed(det, sol, options)
                            results.append(out)
                            open_ids.discard(det.product_id)
                            bars.finished(out)
                        else:
                            fut = pool.submit(solved_fn, entries[det.product_id], options, det, sol)
                            pending[fut] = ("solved", det.product_id)
                    detected.clear()
                if waiting and not busy("detect") and not detected:
                    # a group whose products are all projected: its one balance, then finish
                    projecting = {group_of.get(pid) for pid in busy("solved")}
                    for group, members in _groups(waiting).items():
                        if group in projecting:
                            continue
                        with phases("balance"):
                            balance = earlier.get(group) or shared_balance(members, options)
                        if group in earlier:
                            balance = {**balance, "reused_for": sorted(p.product_id for p in members)}
                        for p in sorted(members, key=_map_pixels, reverse=True):
                            fut = pool.submit(finish_fn, p.to_finish() if events is not None else p,
                                              balance, options)
                            finishing[fut] = p
                            pending[fut] = ("finish", p.product_id)
                            waiting.remove(p)
                if busy("detect") or detected:
                    continue
                if options.mosaic:
                    # a filter set whose products are all finished: its mosaics, in a worker
                    built_now = {r.product_id: group_of[r.product_id][1] for r in results
                                 if r.status == "done" and r.product_id in group_of}
                    still_open = {group_of.get(pid, (None, None))[1] for pid in open_ids}
                    for fset in sorted(set(built_now.values()) - still_open - set(mosaics)):
                        members = sorted(pid for pid, f in {**built_filter_sets, **built_now}.items()
                                         if f == fset)
                        mosaics[fset] = []
                        fut = pool.submit(mosaic_fn, str(options.out_dir), members, options,
                                          f"mosaics {fset}")
                        pending[fut] = ("mosaic", fset)
                if not open_ids and not after_done:
                    after_done = True
                    after_products(results)
        except KeyboardInterrupt:
            if events is not None:
                # SIGINT to the build alone (not its process group): pass it on, so each busy
                # worker removes its unfinished product now instead of finishing it
                for proc in list(getattr(pool, "_processes", {}).values()):
                    if proc.is_alive():
                        os.kill(proc.pid, signal.SIGINT)
            raise
        finally:  # products projected but not finished (interrupted): nothing half-built stays
            unfinished = list(waiting) + [f.result() for f in pending if f.done() and not f.cancelled()
                                          and f.exception() is None and isinstance(f.result(), Projected)]
            for p in unfinished:
                shutil.rmtree(p.work_dir, ignore_errors=True)
    if not after_done:
        after_products(results)
    return results, mosaics


def _raw_bytes(entry: Any) -> int:
    """Size of a product's raw image file (a zip member's uncompressed size): the first
    phase takes the largest first."""
    import zipfile

    raw = getattr(entry, "raw", None)
    try:
        if raw is None:
            return 0
        if getattr(raw, "member", None):
            with zipfile.ZipFile(raw.path) as zf:
                return int(zf.getinfo(raw.member).file_size)
        return int(os.stat(raw.path).st_size)
    except (OSError, KeyError, zipfile.BadZipFile):
        return 0


def _frames(det: Detected) -> int:
    """Frames of a detected product (its maps' size grows with them)."""
    meta = getattr(det.observation, "meta", None)
    return int(getattr(meta, "n_frames", 0) or 0)


def _group_frames(detected: Sequence[Detected], group_of: Mapping[str, tuple[Any, str]]
                  ) -> Callable[[tuple[Detected, Any]], tuple[int, int]]:
    """Sort key of the second phase: (frames of the product's group, its own frames). The
    group projected first is balanced, finished and mosaicked while the rest project."""
    per_group: dict[Any, int] = {}
    for d in detected:
        g = group_of.get(d.product_id)
        per_group[g] = per_group.get(g, 0) + _frames(d)
    return lambda ds: (per_group.get(group_of.get(ds[0].product_id), 0), _frames(ds[0]))


def _map_pixels(p: Projected) -> int:
    """Pixels of a projected product's maps (its enhancement's cost)."""
    total = 0
    for m in p.sidecar.get("maps", {}).values():
        d = m.get("map", {}) if isinstance(m, Mapping) else {}
        total += int(d.get("rows", 0) or 0) * int(d.get("columns", 0) or 0)
    return total


def _project_solved(entry: Any, options: BuildOptions, detected: Detected, solution: Any, *,
                    on_stage: StageCallback | None = None) -> Projected | Detected | ProductResult:
    return project_product(entry, options, on_stage=on_stage, detected=detected, solution=solution)


def solve_jointly(detected: Sequence[Detected], options: BuildOptions, *,
                  on_stage: StageCallback | None = None) -> list[tuple[Detected, Any]]:
    """One :func:`pointing.solve_from_limbs` over ``detected`` (it groups them by pass, one
    spin axis per pass), here with their kernels loaded: per product ``(detected, solution
    or the exception that refused it)``, the ``pointing`` stage being the call's wall and
    CPU time split evenly over the products being built. A resumed build includes the
    finished products without a CK (``built``, :func:`detect_built`), so a pass keeps the
    axis all its images fix: an image refused alone (44M00040) is built when it is the
    only one left."""
    from contextlib import ExitStack

    from . import kernels, pointing

    names = product_stages(options)
    if on_stage is not None:
        for d in detected:
            if not d.built:
                on_stage(d.product_id, "pointing", names.index("pointing"), len(names))
    t0, c0 = time.perf_counter(), time.process_time()
    sols: list[Any]
    try:
        with ExitStack() as stack:
            loaded: set[tuple[Any, ...]] = set()
            for d in detected:
                key = tuple(d.kernel_set.paths)
                if key not in loaded:
                    loaded.add(key)
                    stack.enter_context(kernels.furnished(d.kernel_set))
            sols = list(pointing.solve_from_limbs([d.observation for d in detected], on_error="return"))
    except Exception as err:  # a bug or a kernel failure: every product of the call fails
        sols = [err] * len(detected)
    n = max(1, sum(not d.built for d in detected))
    wall, cpu = round((time.perf_counter() - t0) / n, 3), round((time.process_time() - c0) / n, 3)
    return [(replace(d, stage_seconds={**d.stage_seconds, "pointing": wall},
                     stage_cpu_seconds={**d.stage_cpu_seconds, "pointing": cpu}), s)
            for d, s in zip(detected, sols, strict=True)]


def _solve_failed(det: Detected, err: BaseException, options: BuildOptions) -> ProductResult:
    if isinstance(err, JunoprocError):
        message = err.one_line()
    else:
        detail = "".join(traceback.format_exception(err)) if options.debug else f"{type(err).__name__}: {err}"
        message = f"internal error: {detail}".strip()
    return ProductResult(det.product_id, "failed", message, seconds=sum(det.stage_seconds.values()),
                         stage_seconds=det.stage_seconds, stage_cpu_seconds=det.stage_cpu_seconds)


@contextmanager
def _executor(jobs: int, bars: _Progress) -> Iterator[tuple[Any, Any]]:
    """(executor, progress queue): worker processes, or this process for one job (no queue)."""
    if jobs == 1:
        yield _InProcess(), None
        return
    with _worker_pool(jobs) as (pool, events):
        yield pool, events


def _groups(projected: Sequence[Projected]) -> dict[tuple[Any, str], list[Projected]]:
    groups: dict[tuple[Any, str], list[Projected]] = {}
    for p in projected:
        groups.setdefault(p.group, []).append(p)
    return groups


# ---------------------------------------------------------------------------------------
# per folder: contact sheet and mosaics
# ---------------------------------------------------------------------------------------
def _filter_sets(out_root: Path, results: Sequence[ProductResult]) -> dict[str, str]:
    """Built product -> its filter set (``RGB``, ``METHANE``), from its sidecar."""
    found: dict[str, str] = {}
    for r in results:
        if r.status not in ("done", "skipped"):
            continue
        try:
            side = json.loads((out_root / r.product_id / f"{r.product_id}.json").read_text())
            found[r.product_id] = str(side["colour_balance"]["filter_set"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def _contact_sheet(out_root: Path, results: Sequence[ProductResult], options: BuildOptions,
                   phases: _Phases) -> list[str]:
    """Contact sheet of every composite; remade only when a product was (re)built in this
    run or it is missing."""
    from . import io

    done = [r for r in results if r.status in ("done", "skipped")]
    changed = any(r.status == "done" for r in results)
    pngs = [out_root / r.product_id / f"{r.product_id}-{name}.png"
            for r in done for name in options.projections]
    pngs = [p for p in pngs if p.is_file()]
    sheet_path = out_root / "contact-sheet.png"
    if pngs and (changed or not sheet_path.is_file()):
        labels = [p.stem.replace("-", "  ", 1) for p in pngs]
        with phases("contact_sheet"):
            io.write_png(sheet_path, contact_sheet(pngs, labels=labels))
    return [str(sheet_path)] if pngs else []


def _mosaic_pngs(out_root: Path, fset: str) -> list[str]:
    return sorted(str(p) for p in out_root.glob(f"mosaic-{fset}-*.png"))


def _other_mosaics(out_root: Path, results: Sequence[ProductResult], options: BuildOptions,
                   phases: _Phases, made: Mapping[str, Sequence[str]]) -> list[str]:
    """The mosaics of every filter set with built products: those made by the workers in
    this run (``made``), those of filter sets with nothing rebuilt (kept, or made here
    when missing)."""
    if not options.mosaic:
        return []
    fsets = _filter_sets(out_root, results)
    rebuilt = {fsets[r.product_id] for r in results if r.status == "done" and r.product_id in fsets}
    written: list[str] = []
    for fset in sorted(set(fsets.values())):
        if fset in made:
            written.extend(made[fset])
            continue
        existing = _mosaic_pngs(out_root, fset)
        if existing and fset not in rebuilt:
            written.extend(existing)
            continue
        with phases("mosaics"):
            files, warnings = make_mosaics(str(out_root), sorted(p for p, f in fsets.items() if f == fset),
                                           options)
        for line in warnings:
            print(f"junoproc: {line}", file=sys.stderr)
        written.extend(files)
    return written


def make_mosaics(out_dir: str, product_ids: Sequence[str], options: BuildOptions, *,
                 label: str = "mosaics", on_stage: StageCallback | None = None
                 ) -> tuple[list[str], list[str]]:
    """The mosaics of one filter set's built products (:func:`projection.perijove_mosaics`
    of their equirectangular linear maps): a cylindrical and a polar one, each a linear
    TIFF and a composite PNG in ``out_dir``. Returns (PNG files written, one-line warnings);
    it never raises (a mosaic is an extra: the products are built)."""
    from . import io
    from .enhance import enhance
    from .projection import perijove_mosaics

    out_root = Path(out_dir)
    steps = ("read", "mosaic", "write")

    def step(name: str) -> None:
        if on_stage is not None:
            on_stage(label, name, steps.index(name), len(steps))

    try:
        step("read")
        paths = [out_root / pid / f"{pid}-equirectangular-linear.tif" for pid in product_ids]
        maps = [io.read_linear_map(p, backplanes=MOSAIC_BACKPLANES) for p in paths if p.is_file()]
        if not maps:
            return [], []
        perijove = _perijove_of(out_root, product_ids)
        step("mosaic")
        mosaics = perijove_mosaics(maps)
        del maps
        step("write")
        written, warnings = [], []
        for key, lm in mosaics.items():
            stem = out_root / f"mosaic-{key}"
            io.write_linear_map(stem.with_name(stem.name + "-linear.tif"), lm)
            try:
                comp = enhance(lm, preset=options.preset, overrides=list(options.enhance_overrides) or None,
                               perijove=perijove)
            except JunoprocError as err:
                warnings.append(f"mosaic {key} not enhanced: {err.one_line()}")
                continue
            written.append(str(io.write_png(stem.with_suffix(".png"), comp.image8())))
        return written, warnings
    except JunoprocError as err:
        return [], [f"mosaic skipped: {err.one_line()}"]
    except Exception as err:  # a bug: the products are built, say where
        detail = "".join(traceback.format_exception(err)) if options.debug else f"{type(err).__name__}: {err}"
        return [], [f"mosaic skipped: internal error: {detail}".strip()]


def _perijove_of(out_root: Path, product_ids: Sequence[str]) -> int | None:
    for pid in product_ids:
        try:
            label = json.loads((out_root / pid / f"{pid}.json").read_text())["label"]
            return int(label["PJ"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def contact_sheet(paths: Sequence[Path], *, tile_px: int = 400, columns: int = 4,
                  labels: Sequence[str] | None = None):
    """A grid of thumbnails (RGB uint8) with each image fitted into a square tile, with an
    optional label line under each."""
    import cv2
    import numpy as np

    n = len(paths)
    cols = min(columns, n)
    rows = -(-n // cols)
    label_px = 22 if labels else 0
    cell_h = tile_px + label_px
    sheet = np.zeros((rows * cell_h, cols * tile_px, 3), np.uint8)
    for i, p in enumerate(paths):
        r, c = divmod(i, cols)
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            h, w = img.shape[:2]
            s = tile_px / max(h, w)
            thumb = cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
            y0 = r * cell_h + (tile_px - thumb.shape[0]) // 2
            x0 = c * tile_px + (tile_px - thumb.shape[1]) // 2
            sheet[y0:y0 + thumb.shape[0], x0:x0 + thumb.shape[1]] = thumb
        if labels:
            cv2.putText(sheet, labels[i][:60], (c * tile_px + 4, r * cell_h + tile_px + 15),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.42, (230, 230, 230), 1, cv2.LINE_AA)
    return sheet


def report_json(report: BuildReport) -> str:
    return json.dumps({"out_dir": report.out_dir, "seconds": round(report.seconds, 2),
                       "results": [asdict(r) for r in report.results],
                       "extras": list(report.extras)}, indent=2)
