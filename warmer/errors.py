"""Exceptions that carry their CLI exit code (0 ok, 1 unexpected, 2 usage, 3 job, 4 env,
5 nothing to restore for this environment, 130 interrupted).

Commands raise these and never exit by themselves: `warmer.cli` maps them to exit codes.
"""

from __future__ import annotations

import re


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


class TrustError(UsageError):
    """A signature requirement not met (exit 2): unsigned, signed by an untrusted key, a
    statement about another bundle, a bundle altered after signing, or an envelope that does
    not parse. Nothing has been written when it is raised."""


class StoreError(WarmerError):
    """The store is damaged or cannot be used."""


class RegistryError(WarmerError):
    """The registry answered with something that does not verify, or failed after retries
    (exit 1: nothing the user typed is wrong)."""


class RegistryUnreachable(RegistryError):
    """No answer at all: DNS, refused connection, timeout (exit 1: the network, not the input)."""


class RegistryRefused(RegistryError):
    """The registry cannot serve the request as given (exit 2): missing or wrong credentials,
    a TLS failure, a repository or tag that does not exist. The message says what to change."""

    exit_code = 2


class RegistryBadReply(RegistryError):
    """A registry reply warmer will not act on (exit 2): a document of the wrong shape, type
    or size, a manifest warmer does not write, a tag list that loops, a transfer past the
    deadline. The message names the registry, the reference and the document."""

    exit_code = 2


class NotWarmerManifest(RegistryBadReply):
    """A manifest of a kind warmer never writes (an image index, a Docker manifest list):
    refused by a pull, passed over by `--auto` (exit 2)."""


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


class NothingToRestore(WarmerError):
    """Nothing exists yet for this environment (exit 5): no such tag, no tag matching this
    environment with `--auto`, no such ref. Not an error for an init container or a server that
    starts cold the first time, and distinct from a corrupt bundle (2) or a mismatch (4)."""

    exit_code = 5


#: What a terminal would act on rather than show: C0 and C1 controls, DEL, line and paragraph
#: separators, bidirectional overrides, lone surrogates (which no terminal encoding has).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object, keep: str = "") -> str:
    """`text` from outside (a registry, a bundle, a file) as it may reach a terminal: every
    control character escaped (`\\x1b`, `\\u202e`), so a tag cannot move the cursor,
    ring the bell or rewrite a line. `keep` names characters left as they are (the CLI keeps
    the newlines of its own multi-line messages)."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, str(text))
