"""Files in and out: atomic writes, and reads of torch, JSON and YAML files that fail in one line.

Every result is written to a temporary name in its folder and renamed, so a killed process never
leaves a half-written file. Reads never execute code: torch files load with ``weights_only=True``
and YAML with the safe loader.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from minimascope.errors import MinimascopeError

_UMASK = os.umask(0)
os.umask(_UMASK)


def now() -> str:
    """The time a record states (started, finished, updated): UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def digest(obj: Any) -> str:
    """A record's identity by content: 16 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class WriteError(MinimascopeError):
    """A result could not be written (read-only folder, full disk): the file it would have
    replaced is left as it was. ``path`` is the file or folder that could not be written."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def make_folder(path: str | Path) -> Path:
    """``mkdir -p`` whose failure (a regular file in the way, a read-only filesystem) is one line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create folder {path}: {_reason(exc)}", path) from None
    if not path.is_dir():
        raise WriteError(f"cannot create folder {path}: a file of that name is in the way", path)
    return path


def temporary_name_pattern(name: str) -> str:
    """The glob of the temporary files an atomic write of ``name`` leaves if it is killed."""
    return f".{name}.*.tmp"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    make_folder(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write {path}: {_reason(exc)}", path) from None
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


def read_result_json(path: str | Path, expected_format: str, file_name: str,
                     what: str = "result file") -> dict[str, Any]:
    """A JSON result whose ``format`` is ``expected_format``, at ``path`` or, when ``path`` is a
    folder, at ``path / file_name``; missing, broken or foreign is one line."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise MinimascopeError(f"{what} not found: {path}")
    record = read_json(path, what)
    found = record.get("format") if isinstance(record, dict) else None
    if found != expected_format:
        raise MinimascopeError(f"{path} is not a {expected_format} file (format: {found!r})")
    return record


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


LOCK_FILE = ".lock"


@contextmanager
def locked(folder: str | Path, what: str) -> Iterator[Path]:
    """Hold an exclusive OS lock on ``folder`` (created if need be) for the ``with`` block.

    The lock is ``flock`` on ``folder/.lock``, which records the holder's pid and host. The kernel
    releases it when the process ends however it ends, so a killed process leaves no stale lock;
    a second process asking for it fails at once with one line naming the holder. ``what`` names
    the folder in that line ("run directory", "study directory", ...).
    """
    folder = make_folder(folder)
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as exc:
            raise WriteError(f"cannot lock {what} {folder}: {_reason(exc)}", path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise MinimascopeError(f"{what} {folder} is in use by {holder}; wait for it to finish "
                                   f"or choose another folder") from None
        # A holder may have removed the file between our open and our lock: lock the file in place.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    return text or "another process"
