"""The ``minimascope`` command line: one thin Typer command per task (parse → one library call →
print), Rich for progress. Bad input reaches the user as one ``error:`` line and exit status 2.

Each command lives in its own module and imports the heavy libraries only when it runs, so
``--help`` and option errors come back at once.
"""

from __future__ import annotations

from minimascope.cli import (  # noqa: F401  (each registers its command)
    cache,
    compare,
    datasets,
    landscape,
    minima,
    optimizers,
    report,
    study,
    train,
)
from minimascope.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="minimascope")

