"""How the helper's APIs declare their operations, and the checkers of untrusted arguments.

Each operation is declared once, with a decorator on its handler that states its name, the
policy action it needs (tenant API), whether it names a domain, and the function that checks
its arguments; the API's request path (``pipeline`` for tenants, ``admin_api``) looks the name
up here and never dispatches any other way. Argument checkers take the request's ``args``
object as it came off the socket (``untrusted``) and return only checked values, or raise
``UsageError``; they never act and never look at who is asking.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from vpsshell.backends.base import Backend, DomainInfo
from vpsshell.daemon.config import Limits
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.server import Session
from vpsshell.errors import UsageError

MAX_REQUEST_ID = 2**53  # ids are exact in a double (docs/protocol.md)

Progress = Callable[[str], Awaitable[None]]
ArgsChecker = Callable[[dict[str, Any], Limits], dict[str, Any]]
H = TypeVar("H")


def request_id_of(untrusted: dict[str, Any]) -> int | None:
    """The request's id, or None if it has none that is valid (a bool is not an integer)."""
    untrusted_id = untrusted.get("id")
    if type(untrusted_id) is int and 0 <= untrusted_id < MAX_REQUEST_ID:
        return untrusted_id
    return None


class Request(NamedTuple):
    """A request after sanitizing: only validated values from here on."""

    id: int
    op: str
    caller: Caller
    domain: str | None
    args: dict[str, Any]
    progress: Progress
    audit: dict[str, Any]  # handlers may add fields to this request's audit line
    password: str | None  # only for confirm=password; never logged, never stored


class Target(NamedTuple):
    """An authorized domain: its backend snapshot and the rule that allowed it."""

    info: DomainInfo
    rule: str | None


class ReplyThenSession(NamedTuple):
    """What a handler returns when the connection goes on as a session after its reply."""

    result: dict[str, Any]
    session: Session


@dataclass(frozen=True)
class Operation(Generic[H]):
    name: str
    action: str | None  # policy action, None for operations that need no domain
    domain: str  # none | optional | required
    check_args: ArgsChecker
    handler: H
    when: Callable[[Backend], bool] | None = None  # exists only where the backend can do it


# -- argument checkers ---------------------------------------------------------------------


def refuse_unknown(untrusted: dict[str, Any], known: set[str]) -> None:
    extra = set(untrusted) - known
    if extra:
        raise UsageError(f"unexpected argument(s): {', '.join(sorted(map(str, extra)))[:80]}")


def no_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain"})
    return {}


def bool_arg(untrusted: dict[str, Any], name: str, default: bool = False) -> bool:
    value = untrusted.get(name, default)
    if not isinstance(value, bool):
        raise UsageError(f"{name}: expected true or false")
    return value


def int_value(
    untrusted_value: object, name: str, low: int, high: int | None, expected: str = ""
) -> int:
    """``untrusted_value`` if it is an integer (not a bool) in low..high (no upper bound if
    ``high`` is None); the error says ``expected``, by default "low..high"."""
    if (
        isinstance(untrusted_value, bool)
        or not isinstance(untrusted_value, int)
        or untrusted_value < low
        or (high is not None and untrusted_value > high)
    ):
        raise UsageError(f"{name}: expected {expected or f'{low}..{high}'}")
    return untrusted_value


def int_arg(
    untrusted: dict[str, Any],
    name: str,
    default: int,
    low: int,
    high: int | None,
    expected: str = "",
) -> int:
    return int_value(untrusted.get(name, default), name, low, high, expected)


# -- declaring -------------------------------------------------------------------------------


class Operations(Generic[H]):
    """One API's table of operations, filled by its ``declare`` decorator."""

    def __init__(self) -> None:
        self._by_name: dict[str, Operation[H]] = {}

    def declare(
        self,
        name: str,
        *,
        action: str | None = None,
        domain: str = "none",
        args: ArgsChecker = no_args,
        when: Callable[[Backend], bool] | None = None,
    ) -> Callable[[H], H]:
        def register(handler: H) -> H:
            self._by_name[name] = Operation(name, action, domain, args, handler, when)
            return handler

        return register

    def get(self, untrusted_name: object, backend: Backend) -> Operation[H] | None:
        """The operation of that name that ``backend`` offers, or None."""
        found = self._by_name.get(untrusted_name) if isinstance(untrusted_name, str) else None
        if found is None or (found.when is not None and not found.when(backend)):
            return None
        return found

    def names(self) -> list[str]:
        return sorted(self._by_name)
