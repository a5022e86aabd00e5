"""The tenant API: each operation declared once, each request sanitized, authorized, acted on.

Every handler follows the same path: the envelope and arguments are checked (values from the
socket are ``untrusted_*`` until then), the caller is authorized against the policy for the
operation's action on the named domain, the name is resolved to a backend UUID, and only then
does the backend act. "Not allowed" and "does not exist" produce the same error. One audit
line is written per request, whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from vpsshell import __version__, protocol
from vpsshell.backends.base import Backend, DomainInfo, DomainState
from vpsshell.daemon.accounts import AccountChecker
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits
from vpsshell.daemon.confirm import Outcome, PasswordChecker
from vpsshell.daemon.consoles import Attachment, ConsoleManager
from vpsshell.daemon.events import TENANT_KINDS, Event, EventRecord
from vpsshell.daemon.peer import Caller, CallerLookup
from vpsshell.daemon.policy_state import PolicyState
from vpsshell.daemon.ratelimit import request_bucket
from vpsshell.daemon.server import SESSION_KEY
from vpsshell.errors import (
    ConfirmRequired,
    Denied,
    TemporaryFailure,
    UsageError,
    VpsError,
    not_found_or_denied,
)
from vpsshell.policy import Decision

log = logging.getLogger("vpsshell.api")

DOMAIN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_REQUEST_ID = 2**53
WAIT_POLL_SECONDS = 0.2
LOG_REPLY_BUDGET = protocol.MAX_FRAME_BYTES - 1024
PROGRESS_EVERY_SECONDS = 5.0
RATE_LIMITED_DELAY_MAX_SECONDS = 1.0  # a request over budget waits this long for its refusal
# actions that change a domain: refused while the audit log cannot be written (fail closed)
STATE_CHANGING_ACTIONS = frozenset(
    {"start", "shutdown", "reboot", "poweroff", "reset", "sysrq", "console"}
)

Progress = Callable[[str], Awaitable[None]]


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


Handler = Callable[["TenantApi", Request, Target | None], Awaitable[Any]]


class Operation(NamedTuple):
    name: str
    action: str | None  # policy action, None for operations that need no domain
    domain: str  # none | optional | required
    sanitize_args: Callable[[dict[str, Any], Limits], dict[str, Any]]
    handler: Handler


OPERATIONS: dict[str, Operation] = {}


def _refuse_unknown(untrusted: dict[str, Any], known: set[str]) -> None:
    extra = set(untrusted) - known
    if extra:
        raise UsageError(f"unexpected argument(s): {', '.join(sorted(map(str, extra)))[:80]}")


def _no_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain"})
    return {}


def _shutdown_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain", "wait", "force"})
    force = untrusted.get("force", False)
    if not isinstance(force, bool):
        raise UsageError("force: expected true or false")
    wait: int | None = None
    if "wait" in untrusted or force:
        untrusted_wait = untrusted.get("wait")
        if untrusted_wait is None:
            wait = limits.shutdown_wait_default_seconds
        elif (
            isinstance(untrusted_wait, int)
            and not isinstance(untrusted_wait, bool)
            and 0 <= untrusted_wait <= limits.shutdown_wait_max_seconds
        ):
            wait = untrusted_wait
        else:
            raise UsageError(f"wait: expected 0..{limits.shutdown_wait_max_seconds} seconds")
    return {"wait": wait, "force": force}


def operation(
    name: str,
    *,
    action: str | None = None,
    domain: str = "none",
    args: Callable[[dict[str, Any], Limits], dict[str, Any]] = _no_args,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        OPERATIONS[name] = Operation(name, action, domain, args, handler)
        return handler

    return register


def _message(info: DomainInfo, verb: str) -> dict[str, Any]:
    return {"domain": info.name, "state": info.state.value, "message": f"{info.name}: {verb}"}


class TenantApi:
    def __init__(
        self,
        backend: Backend,
        policy: PolicyState,
        audit: AuditLog,
        limits: Limits,
        consoles: ConsoleManager,
        events: EventRecord,
        passwords: PasswordChecker,
        accounts: AccountChecker | None = None,
        audit_fail_open: bool = False,
    ) -> None:
        self.consoles = consoles
        self.events = events
        self.passwords = passwords
        self.accounts = accounts
        self.audit_fail_open = audit_fail_open
        self.backend = backend
        self.policy = policy
        self.audit = audit
        self.limits = limits
        self.rate = request_bucket(limits.requests_per_minute)
        self.callers = CallerLookup()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- the request path ------------------------------------------------------------------

    async def handle(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Any]:
        """Answer one request message; always returns a reply and writes one audit line."""
        started = time.monotonic()
        untrusted_id = untrusted.get("id")
        request_id = (
            untrusted_id
            if type(untrusted_id) is int and 0 <= untrusted_id < MAX_REQUEST_ID  # not a bool
            else None
        )
        audit: dict[str, Any] = {
            "request_id": request_id,
            "uid": caller.uid,
            "user": caller.user,
            "pid": caller.pid,
            "action": None,
            "domain": None,
            "decision": "invalid",
            "rule": None,
        }
        if not self.rate.take(caller.uid):  # every request counts, well-formed or not
            return await self._rate_limited(caller, untrusted, request_id)
        try:
            fresh = self.callers.fresh(caller)  # groups as NSS says now, not at connect time
            if fresh is None:
                audit["decision"] = "deny"
                audit["reason"] = "uid has no passwd entry any more"
                raise Denied("unknown user")
            request, operation = self._sanitize(fresh, untrusted, request_id, progress, audit)
            request, target = await self._authorize(request, operation, audit)
            if operation.action in STATE_CHANGING_ACTIONS and not self._audit_ready(audit):
                raise TemporaryFailure(
                    "the audit log cannot be written, so actions are refused for now; "
                    "your provider has been told"
                )
            result = await asyncio.wait_for(
                operation.handler(self, request, target),
                timeout=self.limits.action_timeout_seconds + (request.args.get("wait") or 0),
            )
            audit["result"] = "ok"
            reply = protocol.reply_ok(request.id, result)
            if isinstance(result, dict) and SESSION_KEY in result:
                reply[SESSION_KEY] = result.pop(SESSION_KEY)  # the server runs it, never sends it
            return reply
        except VpsError as exc:
            audit["result"] = exc.kind
            audit["message"] = exc.message
            return protocol.reply_error(request_id, exc.kind, exc.message)
        except TimeoutError:
            audit["result"] = "temporary"
            audit["message"] = "timed out"
            return protocol.reply_error(request_id, "temporary", "timed out; try again later")
        except asyncio.CancelledError:
            audit["result"] = "cancelled"
            raise
        except ConnectionError:  # a progress message found the client gone (Ctrl-C, ssh hangup)
            audit["result"] = "cancelled"
            audit["message"] = "the client left before the request finished"
            return protocol.reply_error(request_id, "temporary", "cancelled")
        except Exception:
            log.exception("request %r from %s failed", audit.get("action"), caller.user)
            audit["result"] = "internal-error"
            return protocol.reply_error(request_id, "failed", "internal error in the helper")
        finally:
            audit["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            self.audit.write(**audit)
            if audit["decision"] == "deny":
                self.events.record(
                    "denied",
                    domain=audit["domain"],
                    user=caller.user,
                    detail=f"{audit['action']}: {audit.get('reason') or 'denied'}",
                )

    async def _rate_limited(
        self, caller: Caller, untrusted: dict[str, Any], request_id: int | None
    ) -> dict[str, Any]:
        """A request over the caller's budget: refused, audited folded, and only after a delay,
        so a flood slows down the flooder instead of the helper."""
        untrusted_op = untrusted.get("op")
        self.audit.write_folded(
            ("rate-limited", caller.uid),
            request_id=request_id,
            uid=caller.uid,
            user=caller.user,
            pid=caller.pid,
            action=untrusted_op if isinstance(untrusted_op, str) else None,
            decision="rate-limited",
            result="temporary",
            message="too many requests",
        )
        delay = self.rate.seconds_until_token(caller.uid)
        await asyncio.sleep(min(delay, RATE_LIMITED_DELAY_MAX_SECONDS))
        return protocol.reply_error(
            request_id, "temporary", "too many requests; slow down and try again"
        )

    def _audit_ready(self, audit: dict[str, Any]) -> bool:
        """May an action that changes a domain go ahead, as far as the audit log goes?"""
        if self.audit.writable():
            return True
        audit["audit_unwritable"] = True
        if self.audit_fail_open:
            log.error("the audit log cannot be written; acting anyway (audit_fail_open)")
            return True
        log.error("the audit log cannot be written; refusing %s", audit.get("action"))
        return False

    def _sanitize(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        request_id: int | None,
        progress: Callable[[dict[str, Any]], Awaitable[None]],
        audit: dict[str, Any],
    ) -> tuple[Request, Operation]:
        if untrusted.get("v") != protocol.PROTOCOL_VERSION:
            raise UsageError(
                f"unsupported protocol version (this helper speaks {protocol.PROTOCOL_VERSION})"
            )
        if request_id is None:
            raise UsageError("request id missing or invalid")
        untrusted_op = untrusted.get("op")
        untrusted_args = untrusted.get("args", {})
        operation = OPERATIONS.get(untrusted_op) if isinstance(untrusted_op, str) else None
        if operation is None:
            audit["action"] = repr(untrusted_op)[:64]
            raise UsageError("unknown operation")
        audit["action"] = operation.name
        if not isinstance(untrusted_args, dict):
            raise UsageError("args must be an object")
        domain: str | None = None
        untrusted_domain = untrusted_args.get("domain")
        if operation.domain == "required" or (
            operation.domain == "optional" and untrusted_domain is not None
        ):
            if not isinstance(untrusted_domain, str) or not DOMAIN_NAME_RE.match(untrusted_domain):
                audit["domain"] = repr(untrusted_domain)[:80]
                raise UsageError("invalid domain name")
            domain = untrusted_domain
            audit["domain"] = domain
        untrusted_args = dict(untrusted_args)
        untrusted_password = untrusted_args.pop("password", None)
        if untrusted_password is not None and (
            not isinstance(untrusted_password, str)
            or len(untrusted_password) > 512
            or "\0" in untrusted_password
        ):
            raise UsageError("password: expected a string")
        args = operation.sanitize_args(untrusted_args, self.limits)

        async def send_progress(text: str) -> None:
            await progress(protocol.progress(request_id, text))

        request = Request(
            request_id,
            operation.name,
            caller,
            domain,
            args,
            send_progress,
            audit,
            untrusted_password,
        )
        return request, operation

    async def _authorize(
        self, request: Request, operation: Operation, audit: dict[str, Any]
    ) -> tuple[Request, Target | None]:
        """The decision for the request's action on its domain, taken again after every
        await (a password check, the backend's lookup): a revocation, an expired rule or a
        group change that lands meanwhile stops the action. Returns the request with the
        caller as last looked up."""
        if operation.action is None or request.domain is None:
            audit["decision"] = "allow"
            return request, None
        action, domain = operation.action, request.domain
        decision = self.decide(request.caller, action, domain)
        audit["rule"] = decision.deciding.location if decision.deciding else None
        if not decision.allowed:
            audit["decision"] = "deny"
            audit["reason"] = decision.reason
            raise not_found_or_denied(domain)
        if decision.confirm:
            await self._confirm(request, operation, audit)
        info = await self.backend.lookup(domain)
        if info is None or info.name != domain:
            audit["decision"] = "deny"
            audit["reason"] = "no such domain"
            raise not_found_or_denied(domain)
        caller = self.callers.fresh(request.caller)
        again = self.decide(caller, action, domain) if caller is not None else None
        if caller is None or again is None or not again.allowed:
            audit["decision"] = "deny"
            audit["reason"] = "access ended while the request waited"
            raise not_found_or_denied(domain)
        audit["rule"] = again.deciding.location if again.deciding else None
        audit["decision"] = "allow"
        audit["uuid"] = info.uuid
        return request._replace(caller=caller), Target(info, audit["rule"])

    async def _confirm(self, request: Request, operation: Operation, audit: dict[str, Any]) -> None:
        """``confirm=password``: the tenant's password, checked by PAM, with a lockout
        (``confirm.PasswordChecker``)."""
        caller = request.caller
        audit["confirm"] = "password"
        if not self.passwords.service:
            audit["decision"] = "deny"
            audit["reason"] = "confirm=password but PAM is off (pam_service)"
            raise Denied(f"{request.domain}: this action needs a password, which is not set up")
        locked = self.passwords.locked_for(caller.uid)
        if locked > 0:
            audit["decision"] = "deny"
            audit["reason"] = "password lockout"
            raise TemporaryFailure(f"too many wrong passwords; try again in {int(locked) + 1} s")
        if request.password is None:
            audit["decision"] = "confirm"
            raise ConfirmRequired(f"{operation.action} {request.domain} needs your password")
        outcome, reason = await self.passwords.check(caller.uid, caller.user, request.password)
        if outcome is Outcome.ACCEPTED:
            audit["confirmed"] = True
            return
        audit["decision"] = "deny"
        audit["reason"] = reason
        if outcome is Outcome.REFUSED:
            raise ConfirmRequired("password not accepted")
        if outcome is Outcome.BUSY:
            raise TemporaryFailure("a password check is already under way; try again shortly")
        locked = self.passwords.locked_for(caller.uid)
        raise TemporaryFailure(f"too many wrong passwords; try again in {int(locked) + 1} s")

    def decide(self, caller: Caller, action: str, domain: str) -> Decision:
        """The policy's decision, and nothing added to it: every rule about who may do what
        (console implies watch among them) is in ``Policy.decide``, which is also what
        ``vpsshell-admin policy explain/who/list/test`` answer with."""
        return self.policy.policy.decide(caller.user, caller.groups, action, domain)

    def still_attached_allowed(self, attachment: Attachment, domain: str) -> bool:
        """May this console attachment stay (after a policy reload, and at every periodic
        re-check)? Groups are looked up anew; a refused account ends it."""
        fresh = self.callers.fresh(attachment.caller)
        if fresh is None:
            return False
        if self.accounts is not None and self.accounts.last_refusal(fresh.uid) is not None:
            return False
        action = "console" if attachment.mode == "write" else "watch"
        return self.decide(fresh, action, domain).allowed

    def may_see_events(self, caller: Caller, domain: str, *, confirmed: bool = False) -> bool:
        """May ``caller`` see ``domain``'s events: a grant, and one that wants a password
        (``confirm=``) only if the request showing them gave it (``confirmed``)."""
        decision = self.decide(caller, "events", domain)
        return decision.allowed and (confirmed or decision.confirm is None)

    def lock_for(self, uuid: str) -> asyncio.Lock:
        lock = self._locks.get(uuid)
        if lock is None:
            lock = self._locks[uuid] = asyncio.Lock()
        return lock


async def _power_action(
    api: TenantApi,
    target: Target | None,
    act: Callable[[str], Awaitable[None]],
    verb: str,
) -> dict[str, Any]:
    assert target is not None
    lock = api.lock_for(target.info.uuid)
    if lock.locked():
        raise TemporaryFailure(f"{target.info.name} is busy with another action; try again shortly")
    async with lock:
        await act(target.info.uuid)
        return _message(await api.backend.info(target.info.uuid), verb)


def _refused_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    untrusted_line = untrusted.get("line")
    if not isinstance(untrusted_line, str) or set(untrusted) != {"line"}:
        raise UsageError("refused: expected a line")
    # kept only as an escaped, clipped string: it is evidence, never parsed or executed
    return {"line": untrusted_line[:1024].encode("unicode_escape").decode("ascii")[:1024]}


@operation("refused", args=_refused_args)
async def op_refused(api: TenantApi, request: Request, target: Target | None) -> Any:
    """The shell reports a command it refused (a tenant ran ``sftp-server``, ``scp``...)."""
    request.audit["decision"] = "refused"
    request.audit["line"] = request.args["line"]
    return {}


@operation("list")
async def op_list(api: TenantApi, request: Request, target: Target | None) -> Any:
    """The domains the caller may ``status``. One whose ``status`` wants a password
    (``confirm=``) is listed by name only, with ``"confirm"``: its state and the rest are
    what ``status DOMAIN`` shows once the password is given."""
    caller = request.caller
    domains = await api.backend.list_domains()
    visible = api.policy.policy.visible_domains(
        caller.user, caller.groups, [d.name for d in domains]
    )
    listed: list[dict[str, Any]] = []
    for domain in domains:
        if domain.name not in visible:
            continue
        confirm = api.decide(caller, "status", domain.name).confirm
        listed.append(
            {"name": domain.name, "confirm": confirm} if confirm is not None else domain.to_json()
        )
    return listed


@operation("status", action="status", domain="required")
async def op_status(api: TenantApi, request: Request, target: Target | None) -> Any:
    assert target is not None
    return (await api.backend.info(target.info.uuid)).to_json()


@operation("start", action="start", domain="required")
async def op_start(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.start, "starting")


@operation("reboot", action="reboot", domain="required")
async def op_reboot(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.reboot, "rebooting")


@operation("poweroff", action="poweroff", domain="required")
async def op_poweroff(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.poweroff, "powered off")


@operation("reset", action="reset", domain="required")
async def op_reset(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.reset, "reset")


@operation("shutdown", action="shutdown", domain="required", args=_shutdown_args)
async def op_shutdown(api: TenantApi, request: Request, target: Target | None) -> Any:
    assert target is not None
    wait: int | None = request.args["wait"]
    force: bool = request.args["force"]
    name = target.info.name

    async def shutdown_and_wait(uuid: str) -> None:
        already = (await api.backend.info(uuid)).state == DomainState.SHUTTING_DOWN
        if not (already and wait is not None):  # a repeated --wait joins the shutdown under way
            await api.backend.shutdown(uuid)
        if wait is None:
            return
        deadline = time.monotonic() + wait
        next_progress = time.monotonic() + PROGRESS_EVERY_SECONDS
        while (await api.backend.info(uuid)).state != DomainState.SHUTOFF:
            now = time.monotonic()
            if now >= deadline:
                if not force:
                    raise TemporaryFailure(f"{name} is still shutting down after {wait} s")
                await request.progress(f"{name} did not shut down within {wait} s; powering off")
                await api.backend.poweroff(uuid)
                return
            if now >= next_progress:
                await request.progress(
                    f"waiting for {name} to shut down ({int(deadline - now)} s left)"
                )
                next_progress = now + PROGRESS_EVERY_SECONDS
            await asyncio.sleep(WAIT_POLL_SECONDS)

    result = await _power_action(api, target, shutdown_and_wait, "shutting down")
    if result["state"] == DomainState.SHUTOFF.value:
        result["message"] = f"{name}: shut off"
    return result


@operation("whoami")
async def op_whoami(api: TenantApi, request: Request, target: Target | None) -> Any:
    caller = request.caller
    return {"user": caller.user, "uid": caller.uid, "groups": list(caller.groups)}


@operation("version")
async def op_version(api: TenantApi, request: Request, target: Target | None) -> Any:
    return {
        "helper": __version__,
        "protocol": protocol.PROTOCOL_VERSION,
        "backend": api.backend.kind,
    }


def _console_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain", "takeover", "replay"})
    takeover = untrusted.get("takeover", False)
    replay = untrusted.get("replay", limits.console_replay_default_bytes)
    if not isinstance(takeover, bool):
        raise UsageError("takeover: expected true or false")
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise UsageError("replay: expected a number of bytes")
    return {"takeover": takeover, "replay": min(replay, limits.console_ring_bytes)}


async def _attach(api: TenantApi, request: Request, target: Target | None, mode: str) -> Any:
    from vpsshell.daemon.console_session import run_console_session

    assert target is not None
    # Everything that can fail or wait comes first: from hub.attach() on nothing awaits, so an
    # attachment is only ever made by a request whose reply carries the session that ends it.
    state = (await api.backend.info(target.info.uuid)).state.value
    hub = api.consoles.hub_for(target.info)
    attachment = api.consoles.new_attachment(request.caller, mode)
    takeover = bool(request.args.get("takeover")) and mode == "write"
    displaced = hub.writer if takeover else None
    hub.attach(attachment, takeover=takeover, replay=request.args["replay"])
    request.audit["console"] = {"mode": mode, "takeover": takeover, "attachment": attachment.id}
    user, name, uuid = request.caller.user, target.info.name, target.info.uuid
    if displaced is not None:
        detail = f"from {displaced.caller.user}"
        api.events.record("console-takeover", domain=name, uuid=uuid, user=user, detail=detail)
    api.events.record("console-attached", domain=name, uuid=uuid, user=user, detail=mode)

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await run_console_session(attachment, hub, reader, writer)

    return {"domain": target.info.name, "state": state, "mode": mode, SESSION_KEY: session}


@operation("console", action="console", domain="required", args=_console_args)
async def op_console(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _attach(api, request, target, "write")


@operation("watch", action="watch", domain="required", args=_console_args)
async def op_watch(api: TenantApi, request: Request, target: Target | None) -> Any:
    return await _attach(api, request, target, "watch")


def _log_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain", "lines"})
    lines = untrusted.get("lines", 100)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 1 <= lines <= 10000:
        raise UsageError("lines: expected 1..10000")
    return {"lines": lines}


@operation("log", action="log", domain="required", args=_log_args)
async def op_log(api: TenantApi, request: Request, target: Target | None) -> Any:
    assert target is not None
    hub = api.consoles.hub_for(target.info)
    lines = await asyncio.to_thread(hub.log.tail, request.args["lines"])
    # keep the newest lines that fit one frame (JSON escaping can grow a line up to 6x)
    budget, kept = LOG_REPLY_BUDGET, []
    for line in reversed(lines):
        budget -= len(json.dumps(line)) + 1
        if budget < 0:
            break
        kept.append(line)
    kept.reverse()
    return {"domain": target.info.name, "lines": kept, "truncated": len(kept) < len(lines)}


def _sysrq_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain", "key"})
    key = untrusted.get("key")
    if not isinstance(key, str) or len(key) != 1 or not ("a" <= key <= "z" or "0" <= key <= "9"):
        raise UsageError("key: expected one of 0-9 or a-z")
    return {"key": key}


@operation("sysrq", action="sysrq", domain="required", args=_sysrq_args)
async def op_sysrq(api: TenantApi, request: Request, target: Target | None) -> Any:
    key = request.args["key"]

    async def send(uuid: str) -> None:
        await api.backend.sysrq(uuid, key)

    result = await _power_action(api, target, send, f"sent SysRq {key}")
    return result


EVENTS_DEFAULT_LINES = 100
EVENTS_MAX_LINES = 10000


def _events_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    _refuse_unknown(untrusted, {"domain", "follow", "lines"})
    follow = untrusted.get("follow", False)
    if not isinstance(follow, bool):
        raise UsageError("follow: expected true or false")
    lines = untrusted.get("lines", EVENTS_DEFAULT_LINES)
    if isinstance(lines, bool) or not isinstance(lines, int) or not 0 <= lines <= EVENTS_MAX_LINES:
        raise UsageError(f"lines: expected 0..{EVENTS_MAX_LINES}")
    return {"follow": follow, "lines": lines}


class EventFilter:
    """Which events a tenant's ``events`` request shows, decided per event when it is sent.

    Kept events are matched by UUID: a kept event is shown only if its domain still exists
    and the name it has now is one the request covers, whatever name the event was recorded
    under. So a name given to another domain (a new UUID) shows none of the old domain's
    events, a domain that is gone shows none, and a renamed domain keeps its own. New events
    carry the name their domain has as they happen.

    With a domain (authorized, and confirmed if its grant says ``confirm=``): that domain's
    events, while the caller may still ``events`` it (once not, ``revoked`` is True and the
    session ends); new events only while the name still stands for the same UUID. Without:
    the events of every domain the caller may ``events`` at that moment, except a domain whose
    grant wants a password (``events DOMAIN`` asks for it and shows them). Either way only the
    kinds tenants see. The caller's groups are looked up anew for every batch (``refresh``),
    as for any other decision."""

    def __init__(
        self, api: TenantApi, caller: Caller, target: DomainInfo | None, names: dict[str, str]
    ) -> None:
        self.api = api
        self.caller: Caller | None = caller
        self.domain = target.name if target is not None else None
        self.uuid = target.uuid if target is not None else None
        self.revoked = False
        # name -> the UUID it stands for now: from the backend when the request came, then
        # from each new event that names the domain as it is (a ``console-detached`` may
        # carry the name its console had when it was opened, so it never updates this)
        self._uuid_of = {name: uuid for uuid, name in names.items()}
        self._allowed: dict[str, bool] = {}  # name -> may_see_events, until the next refresh

    def refresh(self) -> None:
        caller = self.caller
        if caller is not None:
            self.caller = self.api.callers.fresh(caller)
        self._allowed.clear()
        if self.domain is not None and not self.allows(self.domain):
            self.revoked = True

    async def recheck(self) -> str | None:
        """The periodic check of a quiet follower: None if it may go on, else why it ends
        (its one domain is no longer the caller's, or PAM refuses the account now)."""
        self.refresh()
        if self.revoked:
            return f"you may no longer see the events of {self.domain}"
        accounts = self.api.accounts
        if self.caller is None:
            return "your account may no longer use vpsshell"
        if accounts is not None:
            max_age = self.api.limits.account_recheck_seconds
            if await accounts.refusal(self.caller.uid, self.caller.user, max_age) is not None:
                return "your account may no longer use vpsshell"
        return None

    def allows(self, name: str) -> bool:
        """May the caller see the events of ``name`` now (a password given counts only for
        the domain the request named)."""
        allowed = self._allowed.get(name)
        if allowed is None:
            allowed = self.caller is not None and self.api.may_see_events(
                self.caller, name, confirmed=name == self.domain
            )
            self._allowed[name] = allowed
        return allowed

    def shows_kept(self, event: Event, name: str) -> bool:
        """A kept event of the domain that is called ``name`` now."""
        if self.revoked or event.kind not in TENANT_KINDS:
            return False
        if self.uuid is not None:
            return event.uuid == self.uuid
        return self.allows(name)

    def shows(self, event: Event) -> bool:
        """A new event, as it is sent."""
        name, uuid = event.domain, event.uuid
        if self.revoked or event.kind not in TENANT_KINDS or name is None or uuid is None:
            return False
        if event.kind != "console-detached":
            self._uuid_of[name] = uuid
        elif self._uuid_of.get(name, uuid) != uuid:
            return False  # that name stands for another domain now
        if self.uuid is not None:
            return (name, uuid) == (self.domain, self.uuid)
        return self.allows(name)


@operation("events", action="events", domain="optional", args=_events_args)
async def op_events(api: TenantApi, request: Request, target: Target | None) -> Any:
    """The kept events of the caller's domains; with ``follow`` the connection then carries
    new ones as they happen (see ``events_session``). Without a domain, ``withheld`` names
    the domains whose events were left out because their grant wants a password."""
    from vpsshell.daemon.events_session import run_events_session

    caller = request.caller
    if target is not None:
        names = {target.info.uuid: target.info.name}
    else:  # the UUID each name stands for now
        names = {d.uuid: d.name for d in await api.backend.list_domains()}
    shown = EventFilter(api, caller, target.info if target is not None else None, names)
    # no await from here on: the history and the follower see every event exactly once
    history = [e for e in api.events.history(names) if shown.shows_kept(e, names[e.uuid or ""])]
    lines: int = request.args["lines"]
    history = history[-lines:] if lines else []
    budget, kept = LOG_REPLY_BUDGET, []
    for event in reversed(history):
        record = event.to_json()
        budget -= len(json.dumps(record)) + 1
        if budget < 0:
            break
        kept.append(record)
    kept.reverse()
    follow: bool = request.args["follow"]
    request.audit["follow"] = follow
    request.audit["events"] = len(kept)
    result: dict[str, Any] = {
        "domain": shown.domain,
        "events": kept,
        "truncated": len(kept) < len(history),
        "follow": follow,
    }
    if target is None:
        visible = api.policy.policy.visible_domains(caller.user, caller.groups, names.values())
        result["withheld"] = sorted(
            name
            for name in visible
            if api.may_see_events(caller, name, confirmed=True) and not shown.allows(name)
        )
    if follow:
        follower = api.events.follow()

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await run_events_session(follower, shown, reader, writer)

        result[SESSION_KEY] = session
    return result
