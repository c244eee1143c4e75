"""minimascope's version: a leaf module, so that what records it (env, the report) imports nothing above it."""

__version__ = "0.1.0"
