"""The ``mvmoe`` command line. Thin: parse, call library functions, print.

Commands live in one module per area (models/flops, train, export, profile/report) and register
themselves on ``app`` / ``profile_app`` when imported below. Those modules import at their top only
the standard library, typer, the base layer and the target table; each command imports torch, the
trainer or the converters in its body, so ``mvmoe --help`` and every ``--help`` load no torch and a
command loads only what it uses (tests/test_imports.py, tests/test_startup.py).
"""

from __future__ import annotations

import errno
import importlib
import pkgutil
import sys
import warnings

import typer
from typer.core import TyperGroup, TyperOption

from ..errors import MvmoeError


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as ``warning: <message>``: no source file, line number or code line."""
    (file or sys.stderr).write(f"warning: {message}\n")


class OneLineErrors(TyperGroup):
    """The root command group: a warning is one line, a user error (MvmoeError) ``error: <message>``
    on stderr and exit 1, Ctrl-C ``interrupted`` and exit 130; any other exception is a bug and keeps its traceback.
    Done here, inside the click command, so tests through ``typer.testing.CliRunner`` see it too."""

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():  # restores showwarning afterwards
                warnings.showwarning = one_line_warning
                return super().invoke(ctx)
        except MvmoeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:  # a path the user typed that no file system takes: their error
                raise
            typer.echo(f"error: {name_too_long(e)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None


def _flag_without_type(self, ctx):
    """typer 0.29 prints a type column for on/off flags too (``--quiet  <bool>``), which reads as if
    the flag took a value; a flag gets no type there."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_without_type

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mobile Vision Mixture-of-Experts: train, export, profile, report.")
profile_app = typer.Typer(no_args_is_help=True, help="Profilers: flops (MACs, params), latency (local or on a phone), memory (resident MiB), ingest (a demo app's benchmark JSON).")
app.add_typer(profile_app, name="profile")


def name_too_long(e: OSError) -> str:
    """One line for ENAMETOOLONG: the path component that is too long (file systems take 255 bytes)."""
    path = str(e.filename or "")
    longest = max(path.split("/"), key=lambda p: len(p.encode()), default="")
    shown = longest if len(longest) <= 40 else f"{longest[:20]}…{longest[-12:]}"
    return (f"a file or folder name of {len(longest.encode())} bytes ({shown}) is longer than the file system "
            f"allows (255 bytes per name): shorten it (--out, or the path given)")


def _load_commands() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("cmd_"):
            importlib.import_module(f"{__name__}.{mod.name}")


_load_commands()


def main() -> None:
    """Console entry point (``mvmoe``). Usage errors are click's (exit 2); user errors one line, exit 1."""
    app()
