"""The Typer application and what every command shares: consoles and one-line errors."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from minimascope.errors import MinimascopeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which minimum did each optimizer find, and how do these minima differ?")
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Which minimum did each optimizer find, and how do these minima differ?"""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    err_console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def one_line_errors(command: Callable) -> Callable:
    """Turn the user's mistakes into one line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except MinimascopeError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[red]interrupted[/red]: the last finished epoch is kept; continue with --resume")
            raise typer.Exit(130) from None

    return wrapper


def split_names(text: str | None) -> list[str] | None:
    """``"a, b,c"`` → ``["a", "b", "c"]``; None or empty → None."""
    return [name.strip() for name in text.split(",") if name.strip()] if text else None
