"""Executors: they decide where and when each node runs; :mod:`..kinds` decides what running it means.

Each is a module with ``execute(state, study_dir, **options)``: it runs every node of ``state`` that
is not finished, dependencies first, and tells ``state`` of every start, epoch and result. Only the
driver (the process that called ``execute``) writes ``study.json``. A module is imported only when
its executor is chosen, so Ray is needed only by ``--executor ray``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from minimascope.errors import MinimascopeError

EXECUTORS = {"local": "minimascope.study.executors.local", "ray": "minimascope.study.executors.ray"}
# What to install when an executor's module needs a package that is missing.
EXTRAS = {"ray": "--executor ray needs Ray: pip install 'minimascope[ray]'"}


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise MinimascopeError(f"unknown executor {name!r}; choose {' or '.join(EXECUTORS)}")


def load_executor(name: str) -> ModuleType:
    """The executor's module, imported now."""
    check_executor(name)
    try:
        return importlib.import_module(EXECUTORS[name])
    except ImportError:
        if name in EXTRAS:
            raise MinimascopeError(EXTRAS[name]) from None
        raise
