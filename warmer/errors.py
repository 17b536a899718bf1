"""Exceptions that carry their CLI exit code (0 ok, 1 unexpected, 2 usage, 3 job, 4 env)."""

from __future__ import annotations


class WarmerError(Exception):
    """Base class; anything else escaping the CLI is an unexpected failure (exit 1)."""

    exit_code = 1


class UsageError(WarmerError):
    """Bad input from the user: arguments, files, references."""

    exit_code = 2


class NotFound(UsageError):
    """A ref that matches nothing in the store (a cold tier may still have it)."""


class SpecError(UsageError):
    """An invalid job spec; names the file and the field path."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file, self.field, self.message = file, field, message
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {message}")


class BundleError(UsageError):
    """A bundle that is corrupt, hostile or not a warmer bundle."""


class StoreError(WarmerError):
    """The store is damaged or cannot be used."""


class JobFailed(WarmerError):
    """The warm-up job failed or timed out (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, log_tail: str = "") -> None:
        self.log_tail = log_tail
        super().__init__(message)


class EnvMismatch(WarmerError):
    """The bundle was made for another environment (exit 4)."""

    exit_code = 4

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("environment mismatch:\n  " + "\n  ".join(reasons))
