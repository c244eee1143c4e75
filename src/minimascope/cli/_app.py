"""The Typer application and what every command shares: consoles, one-line errors, stage progress.

Every way a command can fail reaches the user as one ``error:`` line: a :class:`MinimascopeError`
from the library (exit status 2, see :func:`one_line_errors`) and Click's usage errors (an option
of the wrong type, a missing argument, an unknown option: also exit status 2, see
:class:`OneLineErrorGroup`), whether the app runs as ``minimascope`` or under a test runner.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from minimascope.errors import MinimascopeError

try:  # Typer >= 0.2x carries its own copy of Click: its exceptions are the ones raised
    from typer._click import exceptions as click_exceptions
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as click_exceptions
_Abort = getattr(click_exceptions, "Abort", typer.Abort)

USAGE_ERROR = 2  # bad input of any kind, as Click uses for usage errors
DIVERGED = 3  # `train`: the run diverged (a loss stopped being finite)
INTERRUPTED = 130

# No emoji codes: names from files (arms, paths) are printed as they are (":smile:" stays ":smile:").
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def print_error(message: str) -> None:
    err_console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


class OneLineErrorGroup(TyperGroup):
    """Runs Click in non-standalone mode, so that its usage errors come back here as exceptions
    and are printed as one line instead of Typer's framed box."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                                  **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            if not standalone_mode:
                raise
            console.print(exc.format_message(), highlight=False, markup=False)
            sys.exit(USAGE_ERROR)
        except click_exceptions.ClickException as exc:
            if not standalone_mode:
                raise
            context = getattr(exc, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            print_error(f"{exc.format_message()}{hint}")
            sys.exit(USAGE_ERROR if isinstance(exc, click_exceptions.UsageError) else exc.exit_code)
        except _Abort:
            if not standalone_mode:
                raise
            print_error("aborted")
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(cls=OneLineErrorGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which minimum did each optimizer find, and how do these minima differ?")


@app.callback()
def _group() -> None:
    """Which minimum did each optimizer find, and how do these minima differ?"""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err_console.print(f"[yellow]warning:[/yellow] {escape(' '.join(str(message).split()))}", highlight=False,
                      soft_wrap=True)


def one_line_errors(command: Callable) -> Callable:
    """Turn the user's mistakes into one line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except MinimascopeError as exc:
            print_error(str(exc))
            raise typer.Exit(USAGE_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]: the last finished epoch is kept; continue with --resume")
            raise typer.Exit(INTERRUPTED) from None

    return wrapper


def split_names(text: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None or empty → None."""
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


class RichStageProgress:
    """Adapts ``progress(stage, done, total)`` calls (decoding data, similarity stages) to one Rich
    bar per stage. Starts with the first call; :meth:`stop` ends it (a no-op if it never started)."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.tasks: dict[str, Any] = {}
        self.started = False

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def stop(self) -> None:
        if self.started:
            self.bar.stop()
            self.started = False

    def __enter__(self) -> RichStageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
