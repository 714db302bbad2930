"""Errors a user can fix: the CLIs print them as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input, reported as `error: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class ImageError(UserError):
    """One image could not be read; callers report it and go on with the others."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BackendError(UserError):
    """The backend failed one batch (a server went away, timed out or refused it): the reader
    names that batch's images as failed and goes on with the next batch."""


def one_line(e: BaseException, last: bool = False, width: int = 300) -> str:
    """One line of an engine's (often multi-line) exception message, for a one-line error:
    the first, or the last where the engine puts the cause there (OpenVINO)."""
    lines = str(e).strip().splitlines() or [type(e).__name__]
    return (lines[-1] if last else lines[0])[:width]
