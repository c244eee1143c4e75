"""Files in and out: atomic writes, and reads of torch, JSON and YAML files that fail in one line.

Every result is written to a temporary name in its folder and renamed, so a killed process never
leaves a half-written file. Reads never execute code: torch files load with ``weights_only=True``
and YAML with the safe loader.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError

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
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors for missing or broken files."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MinimascopeError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for corrupt or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MinimascopeError(f"cannot read {what} {path}: {reason}") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's content; a missing or broken file is one line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise MinimascopeError(f"cannot read {what} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise MinimascopeError(f"broken {what} {path}: {exc}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: ``{}``), read with the safe loader."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MinimascopeError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MinimascopeError(f"bad YAML in {path}{where}: {getattr(exc, 'problem', None) or exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise MinimascopeError(f"{path} must hold a mapping of option names to values")
    return values
