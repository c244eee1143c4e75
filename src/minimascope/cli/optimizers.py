"""``minimascope optimizers``: the optimizer registry as a table, or one optimizer's options with their help."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from minimascope.cli._app import app, console, one_line_errors
from minimascope.config import OPTIMIZER_FIELDS


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@app.command("optimizers")
@one_line_errors
def optimizers_command(
    name: Optional[str] = typer.Argument(None, help="an optimizer (or module:Class): list its options with their help"),
) -> None:
    """The optimizers a run can use (--optimizer NAME, or any class as module:Class), with their defaults.

    lr, momentum, nesterov, weight_decay, betas and eps are training options (--lr ...); every other option
    goes through --optimizer-arg KEY=VALUE (a study's optimizer_args).
    """
    from minimascope import optim

    if name is not None:
        entry = optim.lookup(name)
        table = Table(title=escape(f"{entry.name} ({entry.source}): {entry.summary}"), title_justify="left")
        for column in ("option", "default", "given as", "help"):
            table.add_column(column)
        for h in entry.hyperparameters:
            default = "required" if h.default is optim.REQUIRED else _shown(h.default)
            given = f"--{h.name.replace('_', '-')}" if h.field and h.name in OPTIMIZER_FIELDS else "--optimizer-arg"
            table.add_row(escape(h.name), escape(default), given, escape(h.help))
        console.print(table)
        if entry.wraps:
            console.print("every option of the base optimizer passes through to it", highlight=False)
        return
    table = Table(title="optimizers (minimascope optimizers NAME: the options of one)", title_justify="left")
    for column in ("name", "source", "step", "defaults", "what"):
        table.add_column(column)
    for entry in optim.REGISTRY.values():
        step = "closure" if entry.needs_closure else "second-order" if entry.second_order else "first-order"
        defaults = ", ".join(f"{k}={_shown(v)}" for k, v in entry.defaults().items())
        table.add_row(entry.name, entry.source, step, escape(defaults), escape(entry.summary))
    console.print(table)
    console.print("any other optimizer class by import path: --optimizer module:Class, e.g. torch.optim:RAdam or "
                  "pytorch_optimizer:Lion (pip install 'minimascope[zoo]')", highlight=False, markup=False)
