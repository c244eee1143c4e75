"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class MinimascopeError(Exception):
    """A problem with the user's input (path, file, option) that one line can explain."""
