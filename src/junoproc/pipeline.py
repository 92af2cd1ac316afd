"""``build``: every product of a folder, end to end, in parallel processes.

Per product: decode -> calibrate -> kernels -> pointing -> geometry -> projection(s)
-> enhancement -> write. Each product is written into a hidden temporary folder and
renamed into place when complete, so an interrupted build leaves no half-written
product and a second run skips what is finished (unless ``force``); hidden folders left
by a killed run are removed by the next one. One failing product is reported and the
others go on. SPICE is not thread-safe: workers are processes, each loading its own
kernels and limited to its share of the cores (one thread each when there is one
worker per core).

Map projections other than ``perspective`` are made on one lattice per perijove (fixed
pixels per degree, edges on multiples of the pixel size) and cropped to each image's
footprint, so the per-folder mosaics only paste and blend. Per folder: a contact sheet of
every composite and, per filter set (RGB, METHANE), one cylindrical (equirectangular)
and one polar mosaic, the polar one resampled from the cylindrical one (same pixels per
degree: no loss of resolution, no second projection of every image).
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .errors import JunoprocError

#: Projections made by default for every product.
DEFAULT_PROJECTIONS = ("perspective", "equirectangular")
#: Name of the per-folder configuration file.
CONFIG_NAME = "junoproc.toml"
#: Prefix of the hidden folder a product is written into before its final rename.
PARTIAL_TAG = ".partial-"
#: Environment variables that set the thread count of the numeric libraries in a worker.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: A footprint whose longitudes leave a gap narrower than this (deg) spans all of them.
FULL_CIRCLE_GAP_DEG = 20.0
#: Mosaics leave out what an image saw closer to the limb than this (emission angle, deg).
MOSAIC_MAX_EMISSION_DEG = 75.0


@dataclass(frozen=True)
class BuildOptions:
    """Everything ``build`` needs; CLI flags > config file > these defaults."""

    out_dir: str = "out"
    kernels: str | None = None
    projections: tuple[str, ...] = DEFAULT_PROJECTIONS
    preset: str = "enhanced"
    jobs: int = 0  # 0: the number of cores
    force: bool = False
    mosaic: bool = True
    debug: bool = False
    #: Map projections (all but ``perspective``) are made at this resolution on one lattice
    #: (edges on multiples of 1 / resolution degrees), cropped to each image's footprint, so
    #: every product of a perijove pastes onto the same grid for the mosaics.
    map_resolution_px_per_deg: float = 10.0

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
        updates[key] = tuple(value) if key == "projections" else value
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
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# one product
# ---------------------------------------------------------------------------------------
#: ``on_stage(product_id, stage, step, n_steps)``: called as each stage starts.
StageCallback = Callable[[str, str, int, int], None]


def product_stages(options: BuildOptions) -> tuple[str, ...]:
    """The stage names of one product, in order (their timings are in the sidecar)."""
    return ("decode", "calibrate", "kernels", "pointing", "geometry",
            *(f"project_{p}" for p in options.projections),
            *(f"enhance_{p}" for p in options.projections), "write")


class _Stages:
    """Wall and CPU seconds per stage, and the progress callback."""

    def __init__(self, product_id: str, names: Sequence[str], on_stage: StageCallback | None):
        self.product_id, self.names, self.on_stage = product_id, tuple(names), on_stage
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.on_stage is not None:
            self.on_stage(self.product_id, name, self.names.index(name), len(self.names))
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        self.wall[name] = round(time.perf_counter() - t0, 3)
        self.cpu[name] = round(time.process_time() - c0, 3)
        return value


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
    if right_k - left_k >= n_lon - FULL_CIRCLE_GAP_DEG * ppd:
        # an image around a pole sees every longitude; the footprint lattice leaves a gap
        left_k, right_k = 0, n_lon
    bottom_k = max(-int(round(90 * ppd)), math.floor(float(p["lat_bottom_deg"]) * ppd + 1e-6))
    top_k = min(int(round(90 * ppd)), math.ceil(float(p["lat_top_deg"]) * ppd - 1e-6))
    lon_max_west = float(-left_k / ppd) % 360.0
    bounds = (lon_max_west - (right_k - left_k) / ppd, lon_max_west, bottom_k / ppd, top_k / ppd)
    return projection.make_grid(geometry, "equirectangular", bounds=bounds, lon="west", lat="centric",
                                resolution_px_per_deg=ppd)


def process_product(entry: Any, options: BuildOptions, *,
                    on_stage: StageCallback | None = None) -> ProductResult:
    """Run every stage for one product and write ``OUT/<PRODUCT_ID>/`` atomically.

    The product goes to a hidden ``OUT/.<PRODUCT_ID>.partial-<pid>`` folder that is renamed
    into place only when every file and the sidecar are written: a product folder without
    the hidden prefix is always complete.
    """
    from . import geometry, io, kernels, pointing, products, projection
    from .calibrate import calibrate
    from .enhance import enhance

    t_start, c_start = time.perf_counter(), time.process_time()
    product_id = getattr(entry, "product_id", str(entry))
    out_root = Path(options.out_dir)
    final_dir = out_root / product_id
    if (final_dir / f"{product_id}.json").is_file() and not options.force:
        return ProductResult(product_id, "skipped", "already built (use --force to redo)",
                             outputs=tuple(sorted(p.name for p in final_dir.iterdir())))
    stages = _Stages(product_id, product_stages(options), on_stage)
    work_dir = out_root / f".{product_id}{PARTIAL_TAG}{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        raw = stages.run("decode", lambda: products.load_entry(entry)
                         if isinstance(entry, products.ProductEntry) else products.load(entry))
        cal = stages.run("calibrate", lambda: calibrate(raw))
        meta = raw.meta
        kdir, ksource = kernels.resolve_kernel_dir(options.kernels)
        kset = stages.run("kernels", lambda: kernels.select_kernels_for(meta, kdir, source=ksource))
        with kernels.furnished(kset):
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
        composites = {}
        for name, linear in maps.items():
            composites[name] = stages.run(f"enhance_{name}", lambda linear=linear: enhance(
                linear, preset=options.preset, perijove=meta.perijove))

        def write_all() -> list[str]:
            for name, linear in maps.items():
                stem = f"{product_id}-{name}"
                io.write_linear_map(work_dir / f"{stem}-linear.tif", linear)
                io.write_png(work_dir / f"{stem}.png", composites[name].rgb8)
                io.write_tiff(work_dir / f"{stem}-16bit.tif", composites[name].rgb16)
            return sorted(p.name for p in work_dir.iterdir())

        written = stages.run("write", write_all)
        sidecar = {
            "junoproc_version": __version__,
            "product_id": product_id,
            "inputs": {"raw": raw.raw_path, "metadata": meta.metadata_path},
            "label": {k: v for k, v in meta.raw_label.items() if isinstance(v, (str, int, float, list))},
            "kernels": kset.describe(),
            "time_model": asdict(solution.timing),
            "pointing": solution.to_json(),
            "maps": {name: dict(m.sidecar) for name, m in maps.items()},
            "enhancement": {name: c.params for name, c in composites.items()},
            "calibration": {"steps": list(cal.steps), "units": cal.units},
            "stage_seconds": stages.wall,
            "stage_cpu_seconds": stages.cpu,
            "outputs": written,
        }
        io.write_sidecar(work_dir / f"{product_id}.json", sidecar)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(work_dir, final_dir)
        return ProductResult(product_id, "done", limb_rms_px=getattr(solution, "rms_px", None),
                             seconds=time.perf_counter() - t_start,
                             outputs=tuple(written) + (f"{product_id}.json",),
                             stage_seconds=stages.wall, stage_cpu_seconds=stages.cpu,
                             cpu_seconds=time.process_time() - c_start, peak_rss_mb=_peak_rss_mb())
    except JunoprocError as err:
        return ProductResult(product_id, "failed", err.one_line(), seconds=time.perf_counter() - t_start,
                             stage_seconds=stages.wall, stage_cpu_seconds=stages.cpu)
    except Exception as err:  # a bug: keep the batch going, say where
        detail = traceback.format_exc() if options.debug else f"{type(err).__name__}: {err}"
        return ProductResult(product_id, "failed", f"internal error: {detail}".strip(),
                             seconds=time.perf_counter() - t_start, stage_seconds=stages.wall,
                             stage_cpu_seconds=stages.cpu)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------
_EVENTS: Any = None  # the worker's queue of progress events, set by _worker_init
_BUSY = False  # a worker interrupted (SIGINT) while idle just ignores it


def limit_threads(n: int) -> None:
    """At most ``n`` threads per numeric library in this process (geometry's per-pixel
    kernels, OpenCV, OpenMP/BLAS for libraries loaded from now on)."""
    from .geometry import THREADS_ENV

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


def _worker_init(events: Any, threads: int) -> None:
    global _EVENTS
    _EVENTS = events
    _die_with_parent()
    signal.signal(signal.SIGINT, _on_sigint)
    limit_threads(threads)
    # import the stages now, not inside the first product's timings
    from . import calibrate, enhance, geometry, kernels, pointing, projection  # noqa: F401


def _worker_product(entry: Any, options: BuildOptions) -> ProductResult:
    global _BUSY
    events = _EVENTS

    def on_stage(product_id: str, stage: str, step: int, total: int) -> None:
        events.put((product_id, stage, step, total))

    _BUSY = True
    try:
        return process_product(entry, options, on_stage=on_stage if events is not None else None)
    finally:
        _BUSY = False


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

    def finished(self, result: ProductResult) -> None:
        if self.overall is None:
            return
        bar = self.bars.pop(result.product_id, None)
        if bar is not None:
            self.free.append(bar.slot)
            self.free.sort()
            bar.close()
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
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # the libraries read these when a worker imports them, before the initializer runs
    saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    os.environ.update({var: str(threads) for var in THREAD_ENV_VARS})
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(events, threads))
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

    ``progress``: tqdm bars on stderr (when it is a terminal). Ctrl-C stops the workers
    (each removes its unfinished product) and raises KeyboardInterrupt; finished products
    stay and the next run skips them. With more than one job the workers are spawned
    processes, so a script calling ``build`` must do it under
    ``if __name__ == "__main__":`` (Python's rule for spawned processes).
    """
    from . import products

    options = options or BuildOptions()
    t0 = time.perf_counter()
    folder = Path(folder)
    entries = products.find_products(folder)
    if not entries:
        raise JunoprocError("no JunoCam products found", path=folder,
                            hint="point at a folder with *-ImageSet(.zip) / *-raw.png / *.IMG files")
    out_root = Path(options.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    clean_partials(out_root)
    results: list[ProductResult] = []
    todo = []
    for entry in entries:
        missing = getattr(entry, "missing", None)
        if missing:
            results.append(ProductResult(entry.product_id, "incomplete",
                                         f"metadata only: no {missing} (download the image set)"))
        elif (out_root / entry.product_id / f"{entry.product_id}.json").is_file() and not options.force:
            results.append(process_product(entry, options))  # "skipped", without a worker
        else:
            todo.append(entry)

    jobs = min(options.resolved_jobs(), max(1, len(todo)))
    bars = _Progress(len(todo), jobs, progress and sys.stderr.isatty())
    try:
        if jobs == 1:
            for entry in todo:
                results.append(process_product(entry, options, on_stage=bars.stage))
                bars.finished(results[-1])
        elif todo:
            results.extend(_run_pool(todo, options, jobs, bars))
    finally:
        bars.close()
    extras = _perijove_products(out_root, results, options)
    order = {e.product_id: i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order.get(r.product_id, 0))
    return BuildReport(tuple(results), str(out_root), time.perf_counter() - t0, extras)


def _run_pool(todo: Sequence[Any], options: BuildOptions, jobs: int,
              bars: _Progress) -> list[ProductResult]:
    from concurrent.futures.process import BrokenProcessPool

    results = []
    with _worker_pool(jobs) as (pool, events):
        pending: dict[Future[ProductResult], str] = {
            pool.submit(_worker_product, entry, options): entry.product_id for entry in todo}
        try:
            while pending:
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                _drain(events, bars)
                for fut in done:
                    product_id = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        result = ProductResult(product_id, "failed", "the worker process died "
                                               "(out of memory? try -j 1)")
                    results.append(result)
                    bars.finished(result)
        except KeyboardInterrupt:
            # SIGINT to the build alone (not its process group): pass it on, so each busy
            # worker removes its unfinished product now instead of finishing it
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGINT)
            raise
    return results


# ---------------------------------------------------------------------------------------
# per folder: contact sheet and mosaics
# ---------------------------------------------------------------------------------------
def _perijove_products(out_root: Path, results: Sequence[ProductResult],
                       options: BuildOptions) -> tuple[str, ...]:
    """Contact sheet of every composite, and the mosaics; remade only when a product was
    (re)built in this run or they are missing."""
    from . import io

    done = [r for r in results if r.status in ("done", "skipped")]
    changed = any(r.status == "done" for r in results)
    written: list[str] = []
    pngs = [out_root / r.product_id / f"{r.product_id}-{name}.png"
            for r in done for name in options.projections]
    pngs = [p for p in pngs if p.is_file()]
    sheet_path = out_root / "contact-sheet.png"
    if pngs and (changed or not sheet_path.is_file()):
        labels = [p.stem.replace("-", "  ", 1) for p in pngs]
        io.write_png(sheet_path, contact_sheet(pngs, labels=labels))
    if pngs:
        written.append(str(sheet_path))
    if options.mosaic:
        written.extend(_mosaics(out_root, done, options, changed))
    return tuple(written)


def _mosaics(out_root: Path, done: Sequence[ProductResult], options: BuildOptions,
             changed: bool) -> list[str]:
    """Per filter set, a cylindrical and a polar mosaic (linear TIFF, composite PNG)."""
    from . import io
    from .enhance import enhance

    previous = sorted(str(p) for p in out_root.glob("mosaic-*.png"))
    if not changed and previous:
        return previous
    paths = [out_root / r.product_id / f"{r.product_id}-equirectangular-linear.tif" for r in done]
    maps = [io.read_linear_map(p) for p in paths if p.is_file()]
    if not maps:
        return []
    perijove = _perijove_of(out_root, done)
    try:
        mosaics = perijove_mosaics(maps)  # the one call: projection.perijove_mosaics when it lands
    except JunoprocError as err:
        print(f"junoproc: mosaic skipped: {err.one_line()}", file=sys.stderr)
        return []
    written = []
    for key, lm in mosaics.items():
        stem = out_root / f"mosaic-{key}"
        io.write_linear_map(stem.with_name(stem.name + "-linear.tif"), lm)
        try:
            comp = enhance(lm, preset=options.preset, perijove=perijove)
        except JunoprocError as err:
            print(f"junoproc: mosaic {key} not enhanced: {err.one_line()}", file=sys.stderr)
            continue
        written.append(str(io.write_png(stem.with_suffix(".png"), comp.rgb8)))
    return written


def _perijove_of(out_root: Path, done: Sequence[ProductResult]) -> int | None:
    for r in done:
        try:
            label = json.loads((out_root / r.product_id / f"{r.product_id}.json").read_text())["label"]
            return int(label["PJ"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def filter_set(band_names: Sequence[str]) -> str:
    """``RGB`` for BLUE+GREEN+RED products, ``METHANE`` for methane ones, else the names."""
    names = tuple(band_names)
    if set(names) == {"BLUE", "GREEN", "RED"}:
        return "RGB"
    return "+".join(names)


def perijove_mosaics(maps: Sequence[Any]) -> dict[str, Any]:
    """Stand-in for ``projection.perijove_mosaics`` (projection's to own): equirectangular
    maps of a perijove (one lattice, each cropped to its footprint) grouped by filter set,
    pasted onto their common extent and blended with :func:`projection.mosaic`, plus a
    polar map of the pole seen most, resampled from the blend. Keys like
    ``RGB-equirectangular``, ``RGB-polar-north``, ``METHANE-equirectangular``."""
    from . import projection

    groups: dict[tuple[str, float], list[Any]] = {}
    for m in maps:
        grid = m.sidecar.get("map", {})
        if grid.get("projection") != "equirectangular":
            continue
        groups.setdefault((filter_set(m.band_names), float(grid["px_per_deg"])), []).append(m)
    out: dict[str, Any] = {}
    for (name, _), members in sorted(groups.items(), key=lambda kv: kv[0]):
        key = name if name not in {k.split("-")[0] for k in out} else f"{name}-{len(out)}"
        blend = projection.mosaic(_on_common_extent(members))
        out[f"{key}-equirectangular"] = blend
        pole = _pole_seen_most(blend)
        out[f"{key}-polar-{pole}"] = _polar_from_equirectangular(blend, pole)
    return out


def _lattice(grid: Mapping[str, Any]) -> tuple[float, int, int, int, int]:
    """(px/deg, first lattice column east of 0, columns, top lattice row from the north
    pole, rows) of an equirectangular map definition."""
    ppd = float(grid["px_per_deg"])
    col0 = int(round(float(grid["lon_left_east_deg"]) * ppd)) % int(round(360 * ppd))
    row0 = int(round((90.0 - float(grid["lat_top_deg"])) * ppd))
    return ppd, col0, int(grid["columns"]), row0, int(grid["rows"])


def _on_common_extent(maps: Sequence[Any]) -> list[Any]:
    """Equirectangular maps on one lattice -> the same maps on their union's grid: all
    longitudes, the latitudes any of them covers (data NaN elsewhere, weight 0), without
    what each saw at emission > :data:`MOSAIC_MAX_EMISSION_DEG`. Only the backplanes the
    mosaic uses (weight, incidence) are kept."""
    import numpy as np

    from .io import LinearMap

    lat = [_lattice(m.sidecar["map"]) for m in maps]
    ppd = lat[0][0]
    n_lon = int(round(360 * ppd))
    top = min(r0 for _, _, _, r0, _ in lat)
    bottom = max(r0 + n for _, _, _, r0, n in lat)
    grid = dict(maps[0].sidecar["map"])
    grid.update(rows=bottom - top, columns=n_lon, lon_left_east_deg=0.0, lon_left_deg=360.0,
                lon_right_deg=0.0, lat_top_deg=90.0 - top / ppd, lat_bottom_deg=90.0 - bottom / ppd)
    if grid.get("longitude", "").startswith("east"):
        grid.update(lon_left_deg=0.0, lon_right_deg=360.0)
    out = []
    for m, (_, col0, n_cols, row0, n_rows) in zip(maps, lat, strict=True):
        cols = (col0 + np.arange(n_cols)) % n_lon
        rows = slice(row0 - top, row0 - top + n_rows)
        data = np.full((bottom - top, n_lon, m.data.shape[2]), np.nan, np.float32)
        data[rows, cols] = m.data
        if "emission_deg" in m.backplanes:  # the limb smears into long streaks on a map
            grazing = np.zeros(data.shape[:2], bool)
            grazing[rows, cols] = ~(np.asarray(m.backplanes["emission_deg"]) <= MOSAIC_MAX_EMISSION_DEG)
            data[grazing] = np.nan
        planes = {}
        for name in ("weight", "incidence_deg"):
            if name in m.backplanes:
                plane = np.full((bottom - top, n_lon), 0.0 if name == "weight" else np.nan, np.float32)
                plane[rows, cols] = m.backplanes[name]
                planes[name] = plane
        out.append(LinearMap(data, m.band_names, planes, {**m.sidecar, "map": grid}))
    return out


def _pole_seen_most(m: Any) -> str:
    import numpy as np

    ppd, _, _, row0, n_rows = _lattice(m.sidecar["map"])
    lat_deg = 90.0 - (row0 + np.arange(n_rows) + 0.5) / ppd
    area = np.isfinite(m.data).all(axis=2).sum(axis=1) * np.cos(np.radians(lat_deg))
    return "north" if area[lat_deg > 0].sum() >= area[lat_deg < 0].sum() else "south"


def _polar_from_equirectangular(m: Any, pole: str) -> Any:
    """Resample an all-longitude equirectangular map onto projection's polar grid
    (equidistant, same px/deg, out to the covered latitude farthest from the pole)."""
    import cv2
    import numpy as np

    from .geometry import Target
    from .io import LinearMap
    from .projection import MapGrid

    g = m.sidecar["map"]
    ppd, _, n_lon, row0, n_rows = _lattice(g)
    lat_deg = 90.0 - (row0 + np.arange(n_rows) + 0.5) / ppd
    seen = np.flatnonzero(np.isfinite(m.data).any(axis=(1, 2)))
    if not len(seen):
        raise JunoprocError("the mosaic is empty", hint="check the maps' footprints")
    far = lat_deg[seen.max()] if pole == "north" else lat_deg[seen.min()]
    radius = float(min(180.0, math.ceil(90.0 - far if pole == "north" else 90.0 + far)))
    target = Target(str(g["target"]), int(g["target_naif_id"]), str(g["body_frame"]),
                    tuple(float(r) for r in g["radii_km"]))  # type: ignore[arg-type]
    side = int(math.ceil(2 * radius * ppd - 1e-9))
    grid = MapGrid("polar", (side, side), target, "west", "centric",
                   {"px_per_deg": ppd, "native_px_per_deg": g.get("native_px_per_deg", ppd),
                    "pole": pole, "kind": "equidistant", "radius_deg": radius,
                    "latitude_used": "planetocentric colatitude"})
    # projection's polar equidistant grid, in latitude/longitude directly (the test checks
    # it against projection.grid_surface_points; going through body positions costs 1 s)
    centre = (np.arange(side) + 0.5 - side / 2.0) / ppd
    x, y = centre[None, :], centre[:, None]
    colat = np.hypot(x, y)
    if pole == "north":
        lat, lon_e = 90.0 - colat, np.degrees(np.arctan2(x, y))
    else:
        lat, lon_e = colat - 90.0, -np.degrees(np.arctan2(x, -y))
    hit = colat <= radius
    # +1: the source gets one wrapped column on each side (longitude is periodic)
    map_x = np.where(hit, ((lon_e - float(g["lon_left_east_deg"])) % 360.0) * ppd - 0.5 + 1, -10.0)
    map_y = np.where(hit, (90.0 - lat) * ppd - row0 - 0.5, -10.0)
    map_x, map_y = map_x.astype(np.float32), map_y.astype(np.float32)

    def resample(plane: Any, fill: float) -> Any:
        src = np.concatenate([plane[:, -1:], plane, plane[:, :1]], axis=1).astype(np.float32)
        return cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=fill)

    data = np.stack([resample(m.data[..., b], np.nan) for b in range(m.data.shape[2])], axis=-1)
    planes = {"weight": np.nan_to_num(resample(np.asarray(m.backplanes["weight"]), 0.0))} \
        if "weight" in m.backplanes else {}
    sidecar = {**m.sidecar, "map": grid.to_dict(),
               "resampled_from": "the equirectangular mosaic (bilinear, same px/deg)"}
    return LinearMap(data.astype(np.float32), m.band_names, planes, sidecar)


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
