"""minimascope: which minimum did each optimizer find, and how do these minima differ?

``minimascope.load_study(path)`` reads a finished (or partial) study directory back as pandas DataFrames
(:func:`minimascope.results.load_study`).
"""

from typing import Any

from minimascope.version import __version__

__all__ = ["__version__", "load_study"]


def __getattr__(name: str) -> Any:
    # load_study is imported on first use, so `import minimascope` (the CLI's start-up) loads no torch or pandas.
    if name == "load_study":
        from minimascope.results import load_study

        return load_study
    raise AttributeError(f"module 'minimascope' has no attribute {name!r}")
