"""The ``mvmoe`` command line. Thin: parse, call library functions, print.

Commands live in one module per area (models/flops, train, export, profile/report) and register
themselves on ``app`` / ``profile_app`` when imported below.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mobile Vision Mixture-of-Experts: train, export, profile, report.")
profile_app = typer.Typer(no_args_is_help=True, help="FLOPs and latency profilers.")
app.add_typer(profile_app, name="profile")


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print one line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load_commands() -> None:
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_commands()


def main() -> None:
    """Console entry point. Usage errors are click's (exit 2); user errors become one line on
    stderr and exit 1, never a traceback."""
    from ..errors import MvmoeError

    try:
        app()  # standalone mode: click prints usage errors and calls sys.exit itself
    except (MvmoeError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
