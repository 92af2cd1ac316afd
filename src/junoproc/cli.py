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


if __name__ == "__main__":  # pragma: no cover
    main()
