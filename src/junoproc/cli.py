"""The ``junoproc`` command: click commands only (parse, call the library, print).

Every command turns a :class:`~junoproc.errors.JunoprocError` into one line on stderr
and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .errors import JunoprocError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except JunoprocError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"junoproc: error: {err.one_line()}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="junoproc")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Raw JunoCam images to registered maps and composites."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# Commands are defined below, one block per stage; each calls into its module.
# --- commands ---


# --- build ---
@main.command("build")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "out_dir", default=None, help="Output folder [out].")
@click.option("--kernels", default=None, help="Kernel folder (> $JUNOPROC_KERNELS > config > cache).")
@click.option("--projection", "projections", multiple=True,
              help="Projection(s) to make [perspective, equirectangular]; repeatable.")
@click.option("--preset", default=None, help="Enhancement preset [enhanced].")
@click.option("--set", "enhance_overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a preset parameter, as `enhance --set` (e.g. weights.BLUE=1.3); repeatable.")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=None,
              help="Worker processes [0: number of cores].")
@click.option("--force", is_flag=True, help="Redo products that are already built.")
@click.option("--no-mosaic", is_flag=True, help="No per-folder mosaics (the contact sheet is still made).")
@click.option("--no-progress", is_flag=True, help="No progress bars (they only show on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@click.pass_context
def build_cmd(ctx: click.Context, folder: str, out_dir: str | None, kernels: str | None,
              projections: tuple[str, ...], preset: str | None, enhance_overrides: tuple[str, ...],
              jobs: int | None, force: bool, no_mosaic: bool, no_progress: bool, as_json: bool) -> None:
    """Build every product in FOLDER: composites, maps, sidecars, mosaics, contact sheet.

    Finished products are skipped (--force redoes them); Ctrl-C or a kill leaves no
    half-written product, and running the same command again builds the rest. All
    images of a perijove and filter set share one colour balance. Defaults
    can come from FOLDER/junoproc.toml ([build] table); options given here win. Exit 0
    when every product with a raw image is built, 1 otherwise.
    """
    from dataclasses import replace

    from .pipeline import BuildOptions, build, load_config, options_with_config, report_json

    given = {"out_dir": out_dir, "kernels": kernels, "projections": projections or None,
             "preset": preset, "enhance_overrides": enhance_overrides or None, "jobs": jobs,
             "force": force or None,
             "mosaic": False if no_mosaic else None}
    explicit = {k for k, v in given.items() if v is not None}
    options = BuildOptions(debug=bool(ctx.obj.get("debug")))
    options = options_with_config(options, load_config(folder), explicit)
    overrides: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if projections:
        overrides["projections"] = tuple(projections)
    if enhance_overrides:
        overrides["enhance_overrides"] = tuple(enhance_overrides)
    options = replace(options, **overrides)  # type: ignore[arg-type]
    try:
        report = build(folder, options, progress=not no_progress)
    except KeyboardInterrupt:
        click.echo(f"junoproc: interrupted; finished products in {options.out_dir} are kept, "
                   "run the same command again to build the rest", err=True)
        sys.exit(130)
    click.echo(report_json(report) if as_json else report.table())
    for extra in report.extras:
        click.echo(f"wrote {extra}")
    if not report.ok:
        sys.exit(1)


# --- kernels ---
_KERNELS_DIR_HELP = ("Kernel folder. Precedence: this flag > $JUNOPROC_KERNELS > kernels.dir in "
                     "~/.config/junoproc/config.toml > the cache folder.")


@main.group("kernels")
def kernels_group() -> None:
    """SPICE kernels: what a folder holds, what covers which image, download."""


def _echo_kernel_coverage(report: tuple) -> int:
    """Print one block per image; return how many images lack kernels."""
    from .kernels import format_span

    missing = 0
    for item in report:
        click.echo(f"{item.span.product_id}  {item.span.target}  {format_span(item.span)} UTC")
        kset = item.kernel_set
        if not item.ok or kset is None:
            missing += 1
            click.echo(f"  MISSING: {item.problem or 'no SPK covers it'}")
            continue
        spks = ", ".join(f"{f.name} ({f.quality})" for f in kset.of_kind("spk"))
        click.echo(f"  SPK: {spks}")
        if kset.ck_covered:
            click.echo("  CK:  " + ", ".join(f"{f.name} ({f.quality})" for f in kset.of_kind("ck")))
        else:
            click.echo("  CK:  none (the pointing stage solves attitude from the image)")
    return missing


@kernels_group.command("list")
@click.option("--kernels", "kernels_dir", default=None, help=_KERNELS_DIR_HELP)
def kernels_list_cmd(kernels_dir: str | None) -> None:
    """The kernels in the folder: kind, quality, SPK/CK coverage (UTC)."""
    from .kernels import list_kernels, resolve_kernel_dir

    kdir, source = resolve_kernel_dir(kernels_dir)
    click.echo(f"kernels: {kdir} (from {source})")
    rows = list_kernels(kdir)
    if not rows:
        click.echo("no kernels found (run `junoproc kernels fetch PATH` or pass --kernels DIR)")
    for row in rows:
        click.echo(f"{row.file.kind:<8} {row.file.quality:<13} {row.relative_path}")
        for cov in row.coverage_utc:
            click.echo(f"{'':<23}{cov}")


@kernels_group.command("check")
@click.argument("path")
@click.option("--kernels", "kernels_dir", default=None, help=_KERNELS_DIR_HELP)
@click.option("--need-ck", is_flag=True, help="Count an image without CK as missing kernels.")
def kernels_check_cmd(path: str, kernels_dir: str | None, need_ck: bool) -> None:
    """What covers each image of PATH (folder, zip or metadata); exit 1 if kernels are missing."""
    from .kernels import coverage_report, image_spans, resolve_kernel_dir, scan_image_spans

    kdir, source = resolve_kernel_dir(kernels_dir, data=path)
    click.echo(f"kernels: {kdir} (from {source})")
    spans, problems = scan_image_spans(path)
    if not spans:
        image_spans(path)  # raises the one-line error
    missing = _echo_kernel_coverage(coverage_report(spans, kdir, source=source, need_ck=need_ck))
    for problem in problems:
        click.echo(f"skipped: {problem}")
    click.echo(f"{len(spans)} image(s): {len(spans) - missing} covered, {missing} missing kernels")
    if missing:
        sys.exit(1)


@kernels_group.command("fetch")
@click.argument("path", required=False)
@click.option("--kernels", "kernels_dir", default=None,
              help="Destination folder (default: $JUNOPROC_KERNELS > config kernels.dir > cache).")
@click.option("--ck/--no-ck", default=True, help="Also fetch the attitude (CK) kernels [yes].")
@click.option("--dry-run", is_flag=True, help="List what would be downloaded; download nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def kernels_fetch_cmd(path: str | None, kernels_dir: str | None, ck: bool, dry_run: bool,
                      no_progress: bool) -> None:
    """Download the generic kernels, and the SPK/CK the images of PATH need (by time).

    The base URL is NAIF's unless $JUNOPROC_NAIF_URL names a mirror.
    """
    from .kernels import fetch_kernels, image_spans, resolve_kernel_dir

    dest, source = resolve_kernel_dir(kernels_dir, must_exist=False)
    spans = image_spans(path) if path else ()
    click.echo(f"kernels: {dest} (from {source})")
    result = fetch_kernels(dest, spans, ck=ck, progress=not no_progress, dry_run=dry_run,
                           source=source)
    for k in result.kernels:
        source_url = f"  <- {k.url}" if k.action != "present" else ""
        click.echo(f"{k.action:<10} {k.kind:<5} {k.name}{source_url}")
    for note in result.notes:
        click.echo(f"note: {note}")
    missing = _echo_kernel_coverage(result.coverage)
    if result.coverage:
        click.echo(f"{len(spans)} image(s): {len(spans) - missing} covered, {missing} missing kernels")
    if missing:
        sys.exit(1)


# --- simulate ---
@main.command("simulate")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--target", type=click.Choice(["jupiter", "io", "europa", "ganymede", "callisto"],
                                            case_sensitive=False), default="jupiter", show_default=True)
@click.option("--altitude", "altitude_km", type=click.FloatRange(min=1.0), default=None,
              help="Altitude above the target (km) [86000 for Jupiter, 30000 for moons].")
@click.option("--frames", "n_frames", type=click.IntRange(1, 200), default=None,
              help="Number of frames [22 for Jupiter, 14 for moons].")
@click.option("--filters", default="BLUE,GREEN,RED", show_default=True,
              help="FILTER_NAME, comma-separated, in readout order (e.g. METHANE).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-ck", is_flag=True, help="Do not write the CK (the truth keeps the attitude).")
@click.option("--time-offset-ms", type=float, default=0.0, show_default=True,
              help="True frame times = label timing + this offset.")
@click.option("--jupitershine", is_flag=True, help="Moons: light from Jupiter on the night side.")
@click.option("--kernels", "kernels_dir", default=None, type=click.Path(),
              help="Folder with the generic text kernels (LSK, PCK, FK, IK, SCLK) to copy.")
def simulate_cmd(out: str, target: str, altitude_km: float | None, n_frames: int | None, filters: str,
                 seed: int, no_ck: bool, time_offset_ms: float, jupitershine: bool,
                 kernels_dir: str | None) -> None:
    """Write a synthetic raw product, its kernels and its truth into OUT."""
    from .simulate import simulate

    product = simulate(
        out, target=target, altitude_km=altitude_km, n_frames=n_frames,
        filters=tuple(f for f in filters.split(",") if f.strip()), seed=seed, write_ck=not no_ck,
        time_offset_s=time_offset_ms * 1e-3, kernel_dir=kernels_dir, jupitershine=jupitershine,
    )
    click.echo(f"product:  {product.raw_path}")
    click.echo(f"metadata: {product.metadata_path}")
    notes = (" (synthetic text kernels)" if product.synthetic_kernels else "") + (
        "" if product.wrote_ck else " (no CK)")
    click.echo(f"kernels:  {product.kernel_dir}{notes}")
    click.echo(f"truth:    {product.truth_dir / 'truth.json'}")
    click.echo(f"{product.n_frames} frames x {len(product.filters)} filters in {product.elapsed_s:.1f} s")


# --- pointing ---
@main.command("pointing")
@click.argument("product", type=click.Path(exists=True))
@click.option("--kernels", "kernel_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of SPICE kernels (searched recursively).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Solution JSON.")
@click.option("--ck", "ck_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the attitude as a type-3 CK of JUNO_SPACECRAFT (timing offsets stay in -o).")
@click.option("--diagnostic", type=click.Path(dir_okay=False), default=None,
              help="PNG: framelets with the predicted limb (red) and the limb points (green).")
@click.option("--alone", is_flag=True, default=False,
              help="Solve PRODUCT's limb alone, not with the other images of its pass found beside it.")
def pointing_cmd(product: str, kernel_dir: str | None, output: str | None, ck_out: str | None,
                 diagnostic: str | None, alone: bool) -> None:
    """Solve the camera pointing of PRODUCT from the limb (no CK needed).

    The images of the same pass beside PRODUCT (same target, within 3 h) share its spin
    axis: one image's limb barely fixes the axis (quality "fair" at best), several do."""
    from pathlib import Path

    import spiceypy

    from . import pointing
    from .products import load, pass_siblings

    raw = load(product)
    others = [] if alone else pass_siblings(product, raw.meta, max_span_s=pointing.JOINT_MAX_SPAN_S)
    folder = Path(kernel_dir) if kernel_dir else None
    if folder is None:
        from .paths import shared_data_dir

        folder = shared_data_dir() / "kernels"
    suffixes = {".tls", ".tpc", ".tf", ".ti", ".tsc", ".bsp", ".bc"}
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes]
    for path in files:
        spiceypy.furnsh(str(path))
    try:
        points = pointing.detect_limb(raw)
        if others:
            click.echo(f"with {len(others)} other image(s) of its pass: "
                       + ", ".join(o.meta.product_id for o in others))
            sol = pointing.solve_pointing_with_pass(raw, others)
        else:
            sol = pointing.solve_pointing(raw, points=points)
        click.echo(sol.summary())
        if output:
            pointing.save_solution(sol, output)
            click.echo(f"wrote {output}")
        if diagnostic:
            pointing.write_diagnostic(raw, sol, points, diagnostic)
            click.echo(f"wrote {diagnostic}")
        if ck_out:
            pointing.export_ck(sol, ck_out, raw.meta)
            click.echo(f"wrote {ck_out}")
    finally:
        for path in files:
            spiceypy.unload(str(path))


# --- info ---
_INFO_COLUMNS = ("product", "PJ", "target", "frames", "filters", "start (UTC)", "exp ms/TDI", "bit mode",
                 "missing / problem")


def _info_row(s) -> tuple[str, ...]:
    exposure = f"{s.exposure_ms:g}/{s.tdi_stages}" if s.exposure_ms is not None else ""
    note = f"PROBLEM: {s.problem}" if s.problem else (f"{s.missing} missing" if s.missing else "")
    return (s.product_id, "" if s.perijove is None else str(s.perijove), s.target,
            "" if s.frames is None else str(s.frames), ",".join(s.filters), s.start_time_utc, exposure,
            s.bit_mode, note)


@main.command("info")
@click.argument("path", type=click.Path(exists=True))
def info_cmd(path: str) -> None:
    """What a product file, zip or folder holds, and what is missing.

    Exit 0 if everything found is readable (a missing half is listed, not an error);
    1 if a folder holds unreadable files; 2 with a one-line error for a bad single product.
    """
    from .products import summarize

    summaries = summarize(path)
    rows = [_info_row(s) for s in summaries]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_INFO_COLUMNS)]
    for row in (_INFO_COLUMNS, *rows):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    bad = sum(not s.ok for s in summaries)
    incomplete = sum(s.missing is not None for s in summaries)
    click.echo(f"{len(summaries)} product(s): {len(summaries) - bad - incomplete} complete, "
               f"{incomplete} incomplete, {bad} unreadable")
    if bad:
        sys.exit(1)


# --- locate ---
_LOCATE_ROWS = (
    ("lat_centric", "lat_centric_deg", "deg  planetocentric"),
    ("lat_graphic", "lat_graphic_deg", "deg  planetographic"),
    ("lon_east", "lon_east_deg", "deg  east"),
    ("lon_west", "lon_west_deg", "deg  west (System III for Jupiter)"),
    ("incidence", "incidence_deg", "deg"),
    ("emission", "emission_deg", "deg"),
    ("phase", "phase_deg", "deg"),
    ("range_km", "range_km", "km  observer -> surface point"),
    ("resolution", "resolution_km_per_px", "km/px"),
)


@main.command("locate")
@click.argument("meta", type=click.Path(exists=True))
@click.option("--frame", type=click.IntRange(min=0), required=True, help="Frame number, 0-based.")
@click.option("--band", required=True, help="METHANE, BLUE, GREEN or RED (one of the product's).")
@click.option("--pixel", "pixels", type=(float, float), multiple=True, required=True,
              help="X Y in framelet pixels: origin at the framelet's upper-left corner, pixel centres "
                   "at index + 0.5 (the centre of column 824, row 64 is 824.5 64.5); repeatable.")
@click.option("--kernels", "kernel_dirs", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="Kernel folder(s), searched recursively; repeatable "
                   "[$JUNOPROC_KERNELS > config > cache].")
@click.option("--pointing", "pointing_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pointing solution JSON (junoproc pointing -o FILE); used instead of a CK.")
@click.option("--json", "as_json", is_flag=True, help="One flat JSON object per pixel per line.")
def locate_cmd(meta: str, frame: int, band: str, pixels: tuple[tuple[float, float], ...],
               kernel_dirs: tuple[str, ...], pointing_file: str | None, as_json: bool) -> None:
    """Geometry of pixels of one framelet, like ISIS campt: time, where the ray meets the
    target (latitudes, longitudes), illumination angles, range and the ray in J2000.

    META is a -Metadata.json, a PDS3 label, or a product file or folder.
    """
    import json
    import math

    from .geometry import locate_product

    report = locate_product(meta, frame, band, pixels, kernel_dirs=kernel_dirs,
                            pointing_path=pointing_file)
    for px in report.pixels:
        record = px.to_json()
        if as_json:
            record.update(product_id=report.product_id, attitude=report.attitude)
            click.echo(json.dumps(record))
            continue
        click.echo(f"{report.product_id}  frame {px.frame}  {px.band}  pixel ({px.x_px:g}, {px.y_px:g})")
        click.echo(f"  {'utc':<12} {px.utc}")
        click.echo(f"  {'et':<12} {px.et:.6f}  TDB s past J2000")
        hit = f"yes, {px.target}" if px.hit else f"no (the ray misses {px.target})"
        click.echo(f"  {'hit':<12} {hit}")
        if px.hit:
            for label, attr, unit in _LOCATE_ROWS:
                value = getattr(px, attr)
                text = f"{value:.6f}  {unit}" if math.isfinite(value) else "-"
                click.echo(f"  {label:<12} {text}")
        click.echo(f"  {'ray_j2000':<12} ({px.ray_j2000[0]:+.9f}, {px.ray_j2000[1]:+.9f}, "
                   f"{px.ray_j2000[2]:+.9f})  apparent, unit")
        click.echo(f"  {'attitude':<12} {report.attitude}")


# --- project ---
@main.command("project")
@click.argument("product", type=click.Path(exists=True))
@click.option("--projection", type=click.Choice(["equirectangular", "polar", "orthographic", "perspective"]),
              default="equirectangular", show_default=True)
@click.option("--bounds", type=(float, float, float, float), default=None,
              metavar="LON_MIN LON_MAX LAT_MIN LAT_MAX",
              help="Equirectangular bounds in the --lon/--lat conventions [the image's footprint].")
@click.option("--lon", type=click.Choice(["west", "east"]), default="west", show_default=True,
              help="Longitude convention (west = System III west).")
@click.option("--lat", type=click.Choice(["centric", "graphic"]), default="centric", show_default=True,
              help="Latitude convention (planetocentric or planetographic).")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="PX_PER_DEG", help="Pixels per degree [native: the image's best resolution].")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "lanczos", "nearest"]),
              default="bilinear", show_default=True)
@click.option("--linear", is_flag=True, help="Write float32 linear bands (FILE.tif) instead of a composite.")
@click.option("--preset", default="natural", show_default=True, help="Enhance preset of the composite.")
@click.option("--kernels", "kernel_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Kernel folder [$JUNOPROC_KERNELS > config > kernels/ beside PRODUCT > cache].")
@click.option("--pointing", "pointing_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Pointing solution JSON (junoproc pointing -o FILE), used when no CK covers the image.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Output file: .png/.tif composite, or .tif with --linear; sidecar FILE.json beside it.")
def project_cmd(product: str, projection: str, bounds: tuple[float, float, float, float] | None, lon: str,
                lat: str, resolution: float | None, interpolation: str, linear: bool, preset: str,
                kernel_dir: str | None, pointing_file: str | None, output: str) -> None:
    """Map-project PRODUCT: calibrate, locate (CK, --pointing, or solved from the limb), project."""
    from pathlib import Path

    from . import io, kernels, pointing
    from .calibrate import calibrate
    from .geometry import CkAttitude, image_geometry
    from .products import load
    from .projection import project

    out = Path(output)
    if linear and out.suffix.lower() not in (".tif", ".tiff"):
        raise JunoprocError("--linear writes a float32 TIFF", path=out, hint="name the output FILE.tif")
    raw = load(product)
    cal = calibrate(raw)
    meta = raw.meta
    kdir, ksource = kernels.resolve_kernel_dir(kernel_dir, data=product)
    kset = kernels.select_kernels_for(meta, kdir, source=ksource)
    with kernels.furnished(kset):
        if kset.ck_covered:
            attitude, timing, source = CkAttitude(), None, "ck"
        elif pointing_file:
            sol = pointing.load_solution(pointing_file, meta)
            attitude, timing, source = sol.attitude, sol.timing, f"pointing solution {pointing_file}"
        else:
            sol = pointing.solve_pointing(raw)
            attitude, timing, source = sol.attitude, sol.timing, f"solved from the limb ({sol.rms_px:.2f} px)"
        geom = image_geometry(meta, attitude, timing=timing)
        lm = project(cal, geom, projection=projection, bounds=bounds, lon=lon, lat=lat,
                     resolution_px_per_deg=resolution, interpolation=interpolation)
    side = {**dict(lm.sidecar), "attitude_source": source, "kernels": kset.describe()}
    if linear:
        written = io.write_linear_map(out, lm, sidecar=side)
    else:
        from .enhance import enhance

        comp = enhance(lm, preset=preset, perijove=meta.perijove)
        if out.suffix.lower() in (".tif", ".tiff"):
            written = [io.write_tiff(out, comp.rgb16)]
        else:
            written = [io.write_png(out, comp.image8())]
        side["enhancement"] = comp.params
        written.append(io.write_sidecar(out, side))
    h, w = lm.data.shape[:2]
    click.echo(f"{meta.product_id}: {projection} {w}x{h} px ({source})")
    for path in written:
        click.echo(f"wrote {path}")


# --- mosaic ---
@main.command("mosaic")
@click.argument("maps", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--photometric", type=click.Choice(["none", "lambert"]), default="none",
              show_default=True, help="Correction before matching gains (lambert: divide by cos(incidence)).")
@click.option("--no-match", is_flag=True, help="Do not match exposure between maps.")
@click.option("--preset", default=None, help="Also write an enhanced composite PNG beside OUT (this preset).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Linear mosaic FILE.tif.")
def mosaic_cmd(maps: tuple[str, ...], photometric: str, no_match: bool, preset: str | None,
               output: str) -> None:
    """Blend linear maps (junoproc project --linear, same grid) into one, gains matched on overlaps."""
    from pathlib import Path

    from . import io
    from .projection import mosaic

    linear = [io.read_linear_map(p) for p in maps]
    lm = mosaic(linear, match_exposure=not no_match, photometric=photometric)
    out = Path(output)
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise JunoprocError("the mosaic is a float32 linear TIFF", path=out, hint="name it FILE.tif")
    for path in io.write_linear_map(out, lm):
        click.echo(f"wrote {path}")
    if preset:
        from .enhance import enhance

        png = out.with_suffix(".png")
        click.echo(f"wrote {io.write_png(png, enhance(lm, preset=preset).image8())}")
    gains = lm.sidecar["mosaic"]["gains"]
    click.echo("gains: " + "; ".join(f"{Path(p).name} " + ",".join(f"{g:.3f}" for g in row)
                                     for p, row in zip(maps, gains, strict=True)))


# --- enhance ---
@main.command("enhance")
@click.argument("linear", type=click.Path(exists=True, dir_okay=False))
@click.option("--preset", default="enhanced", show_default=True,
              help="natural | enhanced | jupitershine, or an earlier composite's JSON sidecar (same look).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one parameter, e.g. clahe.clip=3, gamma=2.2, weights.BLUE=2.1, "
                   "photometry=minnaert; repeatable. An unknown key lists the valid ones.")
@click.option("--perijove", type=int, default=None,
              help="Perijove for the colour-weight table [from the map's sidecar].")
@click.option("--balance", "balance_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON (e.g. another composite's sidecar) whose colour balance and levels to reuse.")
@click.option("--no-alpha", is_flag=True, help="Never add an alpha channel (unseen pixels stay black).")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="OUT.png (8-bit) or OUT.tif (16-bit); the parameters go to OUT.json.")
def enhance_cmd(linear: str, preset: str, overrides: tuple[str, ...], perijove: int | None,
                balance_path: str | None, no_alpha: bool, out: str) -> None:
    """Enhance a linear map LINEAR.tif (with its backplanes and sidecar, when present)."""
    from .enhance import enhance_file

    comp, written = enhance_file(linear, out, preset=preset, overrides=list(overrides),
                                 perijove=perijove, balance=balance_path, alpha=not no_alpha)
    for path in written:
        click.echo(f"wrote {path}")
    clipped = comp.stats.get("clipped_high_fraction", 0.0) * 100
    click.echo(f"preset {comp.params['preset']}, highlights clipped on {clipped:.2f} % of the valid area, "
               f"{comp.timings_s['total']:.2f} s")
    for note in comp.stats.get("notes", []):
        click.echo(f"note: {note}")


if __name__ == "__main__":  # pragma: no cover
    main()
