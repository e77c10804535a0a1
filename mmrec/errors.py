"""User-facing errors: the CLI prints these as one clear line instead of a traceback."""


class MmrecError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class ConfigError(MmrecError):
    """A config file or override is invalid; the message names the file and the key."""


class DataError(MmrecError):
    """An input data file is malformed; the message names the file (and line or column when known)."""
