"""Domain errors. The CLI turns each into a one-line message on stderr and an exit code."""


class PoetgenError(Exception):
    """Base class: a problem the user can fix. The message names the problem and the fix."""

    exit_code = 1


class CorpusError(PoetgenError):
    """The corpus could not be fetched, verified, read or found."""


class CheckpointError(PoetgenError):
    """A checkpoint could not be written or read."""


class BadCheckpoint(CheckpointError):
    """The checkpoint given is missing, foreign, damaged or of another format: bad input (exit 2), in
    every command that reads one."""

    exit_code = 2


class UsageError(PoetgenError):
    """Options that cannot work together or values out of range."""

    exit_code = 2
