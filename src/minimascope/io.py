"""Files in and out: atomic writes, and reads of torch, JSON and YAML files that fail in one line.

Every result is written to a temporary name in its folder and renamed, so a killed process never
leaves a half-written file. Reads never execute code: torch files load with ``weights_only=True``
and YAML with the safe loader. Result readers read JSON without NaN (:func:`read_result_fields`) and
take each field through :class:`Fields`, so a damaged file is one line naming it and the field.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import socket
import tempfile
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from minimascope.errors import MinimascopeError

T = TypeVar("T")
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


def _refuse_nan(constant: str) -> float:
    if constant == "NaN":  # minimascope writes an undefined number as null, never as NaN
        raise ValueError("it holds NaN, which minimascope never writes (an undefined number is null)")
    return float(constant)


def _read_json_without_nan(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(), parse_constant=_refuse_nan)
    except OSError as exc:
        raise MinimascopeError(f"cannot read {what} {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, a NaN, or bytes that are no text
        raise MinimascopeError(f"damaged {what} {path}: {exc}") from None


def read_checked_json(path: str | Path, what: str = "result file") -> Fields:
    """A JSON file holding a mapping (a result without a ``format``), as :class:`Fields`; missing, broken
    (a NaN included) or no mapping is one line naming the file."""
    return Fields(_read_json_without_nan(Path(path), what), path)


def read_result_json(path: str | Path, expected_format: str, file_name: str,
                     what: str = "result file") -> dict[str, Any]:
    """A JSON result whose ``format`` is ``expected_format``, at ``path`` or, when ``path`` is a
    folder, at ``path / file_name``; missing, broken (a NaN included), or foreign is one line."""
    path = Path(path)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise MinimascopeError(f"{what} not found: {path}")
    record = _read_json_without_nan(path, what)
    found = record.get("format") if isinstance(record, dict) else None
    if found != expected_format:
        raise MinimascopeError(f"{path} is not a {expected_format} file (format: {found!r})")
    return record


def older_format(path: str | Path, file_name: str, formats: Sequence[str]) -> str | None:
    """The format of the result at ``path`` (a file, or the folder holding ``file_name``) when it is one of
    the older ``formats`` a reader asks to have rewritten; None otherwise, a missing or broken file included
    (whose reading then says what is wrong)."""
    file = Path(path) / file_name if Path(path).is_dir() else Path(path)
    try:
        found = json.loads(file.read_text()).get("format")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return None
    return found if found in formats else None


def read_result_fields(path: str | Path, expected_format: str, file_name: str,
                       what: str = "result file") -> Fields:
    """:func:`read_result_json` as :class:`Fields`, whose accessors name the file read."""
    file = Path(path) / file_name if Path(path).is_dir() else Path(path)
    return Fields(read_result_json(file, expected_format, file_name, what), file)


class Fields:
    """Checked access to a JSON mapping read from ``path``: each accessor returns a value of the type
    asked for, or raises one :class:`MinimascopeError` naming the file and the field (``where`` is the
    mapping's place in the file, e.g. ``layers[3]``). What result readers use instead of ``record[key]``."""

    def __init__(self, record: Any, path: str | Path, where: str = "") -> None:
        self.path, self.where = Path(path), where
        if not isinstance(record, dict):
            self.fail("", "a mapping", record)
        self.record: dict[str, Any] = record

    def fail(self, key: str, expected: str, found: Any) -> NoReturn:
        field = self._field(key) or "the top level"
        shown = repr(found) if len(repr(found)) <= 40 else f"{type(found).__name__} {repr(found)[:37]}..."
        raise MinimascopeError(f"malformed result file {self.path}: {field} must be {expected}, not {shown}")

    def raw(self, key: str) -> Any:
        if key not in self.record:
            raise MinimascopeError(f"malformed result file {self.path}: {self._field(key)} is missing")
        return self.record[key]

    def _number(self, key: str, value: Any, *, nullable: bool = False, infinite: bool = False) -> float:
        if value is None and nullable:
            return math.nan  # the writers' null for an undefined number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
                or (math.isinf(value) and not infinite):
            self.fail(key, "a finite number" + (" or null" if nullable else ""), value)
        return float(value)

    def _integer(self, key: str, value: Any, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            self.fail(key, "an integer" + ("" if minimum is None else f" >= {minimum}"), value)
        return value

    def _text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            self.fail(key, "text", value)
        return value

    def _flag(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def _list(self, key: str, value: Any, length: int | None = None) -> list[Any]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            self.fail(key, "a list" + ("" if length is None else f" of {length}"), value)
        return value

    def number(self, key: str, *, nullable: bool = False, infinite: bool = False) -> float:
        """A number (int or float); finite unless ``infinite``; null read as NaN when ``nullable``."""
        return self._number(key, self.raw(key), nullable=nullable, infinite=infinite)

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        return self._integer(key, self.raw(key), minimum)

    def flag(self, key: str) -> bool:
        return self._flag(key, self.raw(key))

    def text(self, key: str) -> str:
        return self._text(key, self.raw(key))

    def numbers(self, key: str, *, length: int | None = None, nullable: bool = False) -> list[float]:
        return [self._number(f"{key}[{i}]", v, nullable=nullable)
                for i, v in enumerate(self._list(key, self.raw(key), length))]

    def integers(self, key: str, *, length: int | None = None, minimum: int | None = None) -> list[int]:
        return [self._integer(f"{key}[{i}]", v, minimum) for i, v in enumerate(self._list(key, self.raw(key), length))]

    def texts(self, key: str, *, length: int | None = None) -> list[str]:
        return [self._text(f"{key}[{i}]", v) for i, v in enumerate(self._list(key, self.raw(key), length))]

    def matrix(self, key: str, rows: int | None = None, columns: int | None = None, *,
               of: type = float) -> list[list[Any]]:
        """A list of ``rows`` lists of ``columns`` values of type ``of`` (float: finite numbers; int; bool)."""
        check = {float: self._number, int: self._integer, bool: self._flag}[of]
        return [[check(f"{key}[{i}][{j}]", v) for j, v in enumerate(self._list(f"{key}[{i}]", row, columns))]
                for i, row in enumerate(self._list(key, self.raw(key), rows))]

    def child(self, key: str) -> Fields:
        return Fields(self.raw(key), self.path, self._field(key))

    def children(self, key: str, *, length: int | None = None) -> list[Fields]:
        return [Fields(value, self.path, self._field(f"{key}[{i}]"))
                for i, value in enumerate(self._list(key, self.raw(key), length))]

    def keys(self) -> list[str]:
        return list(self.record)

    def _field(self, key: str) -> str:
        return ".".join(part for part in (self.where, key) if part)

    def build(self, cls: type[T], *, infinite: Sequence[str] = ()) -> T:
        """The dataclass ``cls`` from this mapping, every field checked against its type hint (str, int,
        bool, float, ``X | None``, lists of those, nested dataclasses); a float field reads null as NaN (the
        writers' null), and may be ±inf only when named in ``infinite``."""
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: self._typed(f.name, self.raw(f.name), hints[f.name], f.name in infinite)
                      for f in dataclasses.fields(cls)})

    def _typed(self, key: str, value: Any, hint: Any, infinite: bool = False) -> Any:
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
        if options:
            if value is None and type(None) in options:
                return None
            hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
        if origin in (list, tuple):
            (item,) = set(typing.get_args(hint)) - {Ellipsis}
            items = [self._typed(f"{key}[{i}]", v, item, infinite) for i, v in enumerate(self._list(key, value))]
            return items if origin is list else tuple(items)
        if dataclasses.is_dataclass(hint):
            return Fields(value, self.path, self._field(key)).build(hint)
        checks = {float: lambda: self._number(key, value, nullable=True, infinite=infinite),
                  int: lambda: self._integer(key, value), bool: lambda: self._flag(key, value),
                  str: lambda: self._text(key, value)}
        return checks[hint]() if hint in checks else value


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


def is_locked(folder: str | Path) -> bool:
    """Whether a process holds ``folder``'s lock (:func:`locked`) now. A killed holder leaves its records
    saying "running", but the kernel released its lock: the test is a shared, non-blocking flock on a
    read-only descriptor, so it creates nothing and changes nothing in the folder."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: never run, or by a version without locks
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return False
