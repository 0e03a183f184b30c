"""Errors a user can cause.  The CLI prints them as one line and exits with status 2."""


class UsageError(Exception):
    """A bad argument, size, preset, profile, or a request this machine cannot satisfy."""


class InvariantViolation(AssertionError):
    """A ``validate_*`` check found the model in a state the kernel must never reach."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.detail = message
