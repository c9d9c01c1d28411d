"""Errors a user can cause and fix: the CLI prints them as one line and exits with status 2."""


class StdbpError(Exception):
    """Base class of user-facing errors: the message says what is wrong and what to do."""


class ArchitectureError(StdbpError, ValueError):
    """An architecture string that does not parse, or does not fit the data."""


class DataError(StdbpError):
    """A data file that is missing, corrupt or inconsistent."""


class CheckpointError(StdbpError):
    """A checkpoint that cannot be loaded or does not fit the request."""


class RunDirError(StdbpError):
    """An output directory that would be overwritten."""
