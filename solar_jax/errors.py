"""The two exception types a command turns into one line on stderr (cli.run)."""


class SolarError(ValueError):
    """Bad input (a path, a config value, a file's content), with a one-line message: exit 2."""


class RunFailed(RuntimeError):
    """Not the input's fault: a run or a write could not go on (a diverged loss, a full disk),
    with a one-line message saying what was kept: exit 1."""
