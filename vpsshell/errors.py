"""Error kinds shared by the helper and the shell, and the exit codes they map to.

An error crosses the socket as a short ``kind`` string plus a message meant for the tenant.
The kinds are a closed list; each maps to one sysexits code (design.md, "Exit codes"). The
helper must never put another tenant's information into a message: "denied" and "no such
domain" are the same kind with the same wording.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``vpsshell -c`` (sysexits), and the status of a line in the interactive
    shell; ``vpsshell.shell.outcome`` decides which one an outcome gets."""

    OK = 0
    FAILED = 1  # the action ran and failed
    USAGE = 64  # EX_USAGE: unknown verb, bad arguments, rejected characters
    UNAVAILABLE = 69  # EX_UNAVAILABLE: the helper is unreachable
    TEMPORARY = 75  # EX_TEMPFAIL: rate-limited, busy, timed out
    DENIED = 77  # EX_NOPERM: denied, or no such domain
    INTERRUPTED = 130  # Ctrl-C during a command, both modes (128 + SIGINT, as shells report it)


class VpsError(Exception):
    """Base of every error that is shown to a user as one line, never as a traceback."""

    kind = "failed"
    exit_code = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ActionFailed(VpsError):
    """The action ran and failed: backend error, domain in the wrong state."""


class UsageError(VpsError):
    kind = "usage"
    exit_code = ExitCode.USAGE


class Unavailable(VpsError):
    kind = "unavailable"
    exit_code = ExitCode.UNAVAILABLE


class TemporaryFailure(VpsError):
    kind = "temporary"
    exit_code = ExitCode.TEMPORARY


class Denied(VpsError):
    kind = "denied"
    exit_code = ExitCode.DENIED


class ConfirmRequired(Denied):
    """The policy wants the tenant's password before this action; the shell may ask and retry."""

    kind = "confirm"


ERROR_KINDS: dict[str, type[VpsError]] = {
    cls.kind: cls
    for cls in (ActionFailed, UsageError, Unavailable, TemporaryFailure, Denied, ConfirmRequired)
}


def not_found_or_denied(domain: str) -> Denied:
    """The one message for both "not yours" and "does not exist"."""
    return Denied(f"{domain}: no such domain or permission denied")


def error_from_wire(kind: str, message: str) -> VpsError:
    """Rebuild an error received from the helper; unknown kinds become plain failures."""
    return ERROR_KINDS.get(kind, ActionFailed)(message)
