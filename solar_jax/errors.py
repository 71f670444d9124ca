"""The one exception type for bad input: commands print its message and exit 2."""


class SolarError(ValueError):
    """Bad input (a path, a config value, a file's content), with a one-line message."""
