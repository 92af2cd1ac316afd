"""``build``: every product of a folder, end to end, in parallel processes.

Per product: decode -> calibrate -> kernels -> pointing -> geometry -> projection(s)
-> enhancement -> write. Each product is written into a hidden temporary folder and
renamed into place when complete, so an interrupted build leaves no half-written
product and a second run skips what is finished (unless ``force``). One failing product
is reported and the others go on. SPICE is not thread-safe: workers are processes, each
loading its own kernels.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .errors import JunoprocError

#: Projections made by default for every product.
DEFAULT_PROJECTIONS = ("perspective", "equirectangular")
#: Name of the per-folder configuration file.
CONFIG_NAME = "junoproc.toml"


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
    #: Map projections (all but ``perspective``) are made on one global grid at this
    #: resolution, so that every product of a perijove lands on the same grid for the mosaic.
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


@dataclass(frozen=True)
class BuildReport:
    results: tuple[ProductResult, ...]
    out_dir: str
    seconds: float
    extras: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(r.status in ("done", "skipped") for r in self.results
                   if r.status != "incomplete")

    def table(self) -> str:
        rows = [("product", "status", "limb rms px", "time s", "outputs / message")]
        for r in self.results:
            rms = f"{r.limb_rms_px:.2f}" if r.limb_rms_px is not None else "-"
            detail = r.message if r.status in ("failed", "incomplete") else f"{len(r.outputs)} files"
            rows.append((r.product_id, r.status, rms, f"{r.seconds:.1f}", detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
                 for row in rows]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# one product
# ---------------------------------------------------------------------------------------
def _timed(stages: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    value = fn()
    stages[name] = round(time.perf_counter() - t0, 3)
    return value


def process_product(entry: Any, options: BuildOptions) -> ProductResult:
    """Run every stage for one product and write ``OUT/<PRODUCT_ID>/`` atomically."""
    from . import geometry, io, kernels, pointing, products, projection
    from .calibrate import calibrate
    from .enhance import enhance

    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    product_id = getattr(entry, "product_id", str(entry))
    out_root = Path(options.out_dir)
    final_dir = out_root / product_id
    if (final_dir / f"{product_id}.json").is_file() and not options.force:
        return ProductResult(product_id, "skipped", "already built (use --force to redo)",
                             outputs=tuple(sorted(p.name for p in final_dir.iterdir())))
    work_dir = out_root / f".{product_id}.partial-{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        raw = _timed(stages, "decode", lambda: products.load_entry(entry)
                      if isinstance(entry, products.ProductEntry) else products.load(entry))
        cal = _timed(stages, "calibrate", lambda: calibrate(raw))
        meta = raw.meta
        kdir, ksource = kernels.resolve_kernel_dir(options.kernels)
        kset = _timed(stages, "kernels", lambda: kernels.select_kernels_for(meta, kdir, source=ksource))
        with kernels.furnished(kset):
            ck = geometry.CkAttitude() if kset.ck_covered else None
            solution = _timed(stages, "pointing", lambda: pointing.solve_pointing(cal, ck=ck))
            geom = _timed(stages, "geometry", lambda: geometry.image_geometry(
                meta, solution.attitude, timing=solution.timing))
            maps = {}
            for name in options.projections:
                grid_options: dict[str, Any] = {}
                if name != "perspective":
                    grid_options["resolution_px_per_deg"] = options.map_resolution_px_per_deg
                    if name == "equirectangular":
                        grid_options["bounds"] = "global"
                maps[name] = _timed(stages, f"project_{name}", functools.partial(
                    projection.project, cal, geom, projection=name, **grid_options))
        composites = {}
        for name, linear in maps.items():
            composites[name] = _timed(stages, f"enhance_{name}", functools.partial(
                enhance, linear, preset=options.preset, perijove=meta.perijove))

        def write_all() -> list[str]:
            written: list[str] = []
            for name, linear in maps.items():
                stem = work_dir / f"{product_id}-{name}"
                io.write_linear_map(stem.with_name(stem.name + "-linear.tif"), linear)
                io.write_png(stem.with_suffix(".png"), composites[name].rgb8)
                io.write_tiff(stem.with_name(stem.name + "-16bit.tif"), composites[name].rgb16)
            written = sorted(p.name for p in work_dir.iterdir())
            return written

        written = _timed(stages, "write", write_all)
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
            "stage_seconds": stages,
            "outputs": written,
        }
        io.write_sidecar(work_dir / f"{product_id}.json", sidecar)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(work_dir, final_dir)
        rms = getattr(solution, "rms_px", None)
        return ProductResult(product_id, "done", limb_rms_px=rms,
                             seconds=time.perf_counter() - t_start,
                             outputs=tuple(written) + (f"{product_id}.json",), stage_seconds=stages)
    except JunoprocError as err:
        return ProductResult(product_id, "failed", err.one_line(), seconds=time.perf_counter() - t_start,
                             stage_seconds=stages)
    except Exception as err:  # a bug: keep the batch going, say where
        detail = traceback.format_exc() if options.debug else f"{type(err).__name__}: {err}"
        return ProductResult(product_id, "failed", f"internal error: {detail}".strip(),
                             seconds=time.perf_counter() - t_start, stage_seconds=stages)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# a folder
# ---------------------------------------------------------------------------------------
def build(folder: str | Path, options: BuildOptions | None = None, *,
          progress: bool = True) -> BuildReport:
    """Every product in ``folder``: see the module docstring."""
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
    results: list[ProductResult] = []
    todo = []
    for entry in entries:
        missing = getattr(entry, "missing", None)
        if missing:
            results.append(ProductResult(entry.product_id, "incomplete", f"no {missing} (download it)"))
        else:
            todo.append(entry)

    bar = _progress(len(todo), progress)
    jobs = min(options.resolved_jobs(), max(1, len(todo)))
    if jobs == 1:
        for entry in todo:
            results.append(process_product(entry, options))
            _tick(bar, results[-1])
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(process_product, entry, options) for entry in todo]
            for fut in as_completed(futures):
                results.append(fut.result())
                _tick(bar, results[-1])
    if bar is not None:
        bar.close()
    extras = _perijove_products(out_root, results, options)
    order = {e.product_id: i for i, e in enumerate(entries)}
    results.sort(key=lambda r: order.get(r.product_id, 0))
    return BuildReport(tuple(results), str(out_root), time.perf_counter() - t0, extras)


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="build", file=sys.stderr, leave=True)


def _tick(bar, result: ProductResult) -> None:
    if bar is not None:
        bar.set_postfix_str(f"{result.product_id} {result.status}")
        bar.update(1)


def _perijove_products(out_root: Path, results: Sequence[ProductResult],
                       options: BuildOptions) -> tuple[str, ...]:
    """Contact sheet of all composites (and mosaics, when available)."""
    from . import io

    done = [r for r in results if r.status in ("done", "skipped")]
    written: list[str] = []
    pngs = []
    for r in done:
        for name in options.projections:
            p = out_root / r.product_id / f"{r.product_id}-{name}.png"
            if p.is_file():
                pngs.append(p)
                break
    if pngs:
        sheet = contact_sheet(pngs)
        path = out_root / "contact-sheet.png"
        io.write_png(path, sheet)
        written.append(str(path))
    if options.mosaic:
        written.extend(_mosaics(out_root, done))
    return tuple(written)


def _mosaics(out_root: Path, done: Sequence[ProductResult]) -> list[str]:
    """Per-perijove equirectangular mosaic of the linear maps (when 2+ images)."""
    try:
        from . import io, projection
        from .enhance import enhance
    except ImportError:
        return []
    if not hasattr(projection, "mosaic"):
        return []
    maps = []
    for r in done:
        p = out_root / r.product_id / f"{r.product_id}-equirectangular-linear.tif"
        if p.is_file():
            maps.append(io.read_linear_map(p))
    if len(maps) < 2:
        return []
    try:
        mosaic = projection.mosaic(maps)
    except JunoprocError as err:
        print(f"junoproc: mosaic skipped: {err.one_line()}", file=sys.stderr)
        return []
    path = out_root / "mosaic-equirectangular.png"
    io.write_png(path, enhance(mosaic, preset="enhanced").rgb8)
    return [str(path)]


def contact_sheet(paths: Sequence[Path], *, tile_px: int = 400, columns: int = 4):
    """A grid of thumbnails (RGB uint8) with each image fitted into a square tile."""
    import cv2
    import numpy as np

    n = len(paths)
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = np.zeros((rows * tile_px, cols * tile_px, 3), np.uint8)
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        s = tile_px / max(h, w)
        thumb = cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, cols)
        y0 = r * tile_px + (tile_px - thumb.shape[0]) // 2
        x0 = c * tile_px + (tile_px - thumb.shape[1]) // 2
        sheet[y0:y0 + thumb.shape[0], x0:x0 + thumb.shape[1]] = thumb
    return sheet


def report_json(report: BuildReport) -> str:
    return json.dumps({"out_dir": report.out_dir, "seconds": round(report.seconds, 2),
                       "results": [asdict(r) for r in report.results],
                       "extras": list(report.extras)}, indent=2)
