"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits non-zero."""


class UserError(Exception):
    """A problem with the user's input or environment: say what is wrong and what to do.

    The message is always one line: control characters a user's value brings along (a newline in
    a manifest cell, a tab in a file name) are shown escaped."""

    exit_code = 2

    def __str__(self) -> str:
        text = super().__str__()
        return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class InputError(UserError):
    """An input file, folder, manifest or value is unusable."""


class CheckpointError(UserError):
    """A weights file does not match the expected format, architecture or checksum."""


class ResourceError(UserError):
    """The job would exceed a resource limit (memory, voxels)."""

    exit_code = 3


class DiskFullError(ResourceError):
    """No space left (or over quota) where the tool must write."""
