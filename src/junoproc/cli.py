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
@click.option("-j", "--jobs", type=int, default=None, help="Worker processes [number of cores].")
@click.option("--force", is_flag=True, help="Redo products that are already built.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@click.pass_context
def build_cmd(ctx: click.Context, folder: str, out_dir: str | None, kernels: str | None,
              projections: tuple[str, ...], preset: str | None, jobs: int | None, force: bool,
              as_json: bool) -> None:
    """Build every product in FOLDER: composites, maps, sidecars, mosaic, contact sheet."""
    from dataclasses import replace

    from .pipeline import BuildOptions, build, load_config, options_with_config, report_json

    given = {"out_dir": out_dir, "kernels": kernels, "projections": projections or None,
             "preset": preset, "jobs": jobs, "force": force or None}
    explicit = {k for k, v in given.items() if v is not None}
    options = BuildOptions(debug=bool(ctx.obj.get("debug")))
    options = options_with_config(options, load_config(folder), explicit)
    overrides: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if projections:
        overrides["projections"] = tuple(projections)
    options = replace(options, **overrides)  # type: ignore[arg-type]
    report = build(folder, options)
    click.echo(report_json(report) if as_json else report.table())
    for extra in report.extras:
        click.echo(f"wrote {extra}")
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
