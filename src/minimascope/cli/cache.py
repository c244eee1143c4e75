"""``minimascope cache``: the decoded data sets under MINIMASCOPE_CACHE, listed or cleared."""

from __future__ import annotations

import typer

from minimascope.cli._app import app, console, one_line_errors


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:,.1f} MB"


@app.command("cache")
@one_line_errors
def cache_command(
    clear: bool = typer.Option(False, "--clear", help="remove every cache (each is rebuilt when next needed)"),
) -> None:
    """List the decoded data-set caches (size and source), or remove them with --clear."""
    from minimascope import data

    root = data.cache_root()
    entries = data.clear_caches() if clear else data.list_caches()
    if not entries:
        console.print(f"no caches in {root}", highlight=False, markup=False)
        return
    for entry in entries:
        console.print(f"{_size(entry.size_bytes):>10}  {entry.path.name}  {entry.source}", highlight=False,
                      markup=False, soft_wrap=True)
    total = _size(sum(entry.size_bytes for entry in entries))
    console.print(f"{'removed' if clear else 'total'} {total} in {root}", highlight=False, markup=False)
