"""The run directory: its paths, atomic writes, and reading what a run left behind.

A run directory holds ``run.json`` (config, versions, device, status, final metrics),
``metrics.csv`` (one row per epoch), TensorBoard ``events.*`` files, ``checkpoint.pt`` (the
latest state for resume) and ``final.pt`` (final weights only). Every file is written to a
temporary name and renamed, so a killed process never leaves a half-written file, and
``run.json`` with ``status: completed`` is the only sign that a run is finished.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from minimascope.errors import MinimascopeError

RUN_JSON = "run.json"
METRICS_CSV = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "final.pt"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors for missing or broken files."""
    path = Path(path)
    if not path.is_file():
        raise MinimascopeError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MinimascopeError(f"cannot read {what} {path}: {reason}") from None


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        raise MinimascopeError(f"not a run directory (no {RUN_JSON}): {run_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MinimascopeError(f"broken {path}: {exc}") from None


def is_completed(run_dir: str | Path) -> bool:
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "completed"
    except json.JSONDecodeError:
        return False
