"""The one exception type users see: a one-line message naming the problem and how to fix it."""


class SparsecodeError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and exits with status 2.

    Messages name the thing that is wrong (file, field, shape, value) and, where it helps,
    what to do about it. They must fit on one line.
    """


class ConfigError(SparsecodeError, ValueError):
    """A configuration value is malformed or contradicts another one."""


class Interrupted(SparsecodeError):
    """The user stopped a long job (Ctrl-C); what could be saved was saved. The CLI exits with 130."""


class DataError(SparsecodeError, ValueError):
    """Input data is missing, malformed, of the wrong shape, or not finite."""
