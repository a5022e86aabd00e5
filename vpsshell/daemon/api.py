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
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits
from vpsshell.daemon.consoles import Attachment, ConsoleManager
from vpsshell.daemon.events import TENANT_KINDS, Event, EventRecord
from vpsshell.daemon.peer import Caller, resolve_caller
from vpsshell.daemon.policy_state import PolicyState
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


class TokenBucket:
    """Per-user request budget: ``rate_per_minute`` sustained, bursts up to a quarter of it."""

    def __init__(self, rate_per_minute: int) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(10.0, rate_per_minute / 4)
        self._buckets: dict[int, tuple[float, float]] = {}

    def take(self, uid: int) -> bool:
        now = time.monotonic()
        tokens, stamp = self._buckets.get(uid, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[uid] = (tokens, now)
            return False
        self._buckets[uid] = (tokens - 1.0, now)
        return True


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
        pam_service: str = "",
    ) -> None:
        self.consoles = consoles
        self.events = events
        self.pam_service = pam_service
        self._password_failures: dict[int, tuple[int, float]] = {}
        self.backend = backend
        self.policy = policy
        self.audit = audit
        self.limits = limits
        self.rate = TokenBucket(limits.requests_per_minute)
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
            if isinstance(untrusted_id, int) and 0 <= untrusted_id < MAX_REQUEST_ID
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
        try:
            request, operation = self._sanitize(caller, untrusted, request_id, progress, audit)
            if not self.rate.take(caller.uid):
                raise TemporaryFailure("too many requests; slow down and try again")
            target = await self._authorize(request, operation, audit)
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
    ) -> Target | None:
        if operation.action is None or request.domain is None:
            audit["decision"] = "allow"
            return None
        decision = self.decide(request.caller, operation.action, request.domain)
        audit["rule"] = decision.deciding.location if decision.deciding else None
        if not decision.allowed:
            audit["decision"] = "deny"
            audit["reason"] = decision.reason
            raise not_found_or_denied(request.domain)
        if decision.confirm:
            await self._confirm(request, operation, audit)
        info = await self.backend.lookup(request.domain)
        if info is None or info.name != request.domain:
            audit["decision"] = "deny"
            audit["reason"] = "no such domain"
            raise not_found_or_denied(request.domain)
        audit["decision"] = "allow"
        audit["uuid"] = info.uuid
        return Target(info, audit["rule"])

    async def _confirm(self, request: Request, operation: Operation, audit: dict[str, Any]) -> None:
        """``confirm=password``: the tenant's password, checked by PAM, with a lockout."""
        caller = request.caller
        audit["confirm"] = "password"
        if not self.pam_service:
            audit["decision"] = "deny"
            audit["reason"] = "confirm=password but PAM is off (pam_service)"
            raise Denied(f"{request.domain}: this action needs a password, which is not set up")
        failures, locked_until = self._password_failures.get(caller.uid, (0, 0.0))
        now = time.monotonic()
        if locked_until > now:
            audit["decision"] = "deny"
            audit["reason"] = "password lockout"
            raise TemporaryFailure(
                f"too many wrong passwords; try again in {int(locked_until - now) + 1} s"
            )
        if request.password is None:
            audit["decision"] = "confirm"
            raise ConfirmRequired(f"{operation.action} {request.domain} needs your password")
        from vpsshell.daemon.pam_service import password_refusal

        refusal = await asyncio.wait_for(
            asyncio.to_thread(password_refusal, caller.user, request.password, self.pam_service),
            timeout=30,
        )
        if refusal is not None:
            failures += 1
            lock = now + self.limits.password_lockout_seconds
            self._password_failures[caller.uid] = (
                (0, lock) if failures >= self.limits.password_attempts else (failures, 0.0)
            )
            audit["decision"] = "deny"
            audit["reason"] = f"password not accepted: {refusal}"
            if failures >= self.limits.password_attempts:
                raise TemporaryFailure(
                    "too many wrong passwords; try again in "
                    f"{int(self.limits.password_lockout_seconds)} s"
                )
            raise ConfirmRequired("password not accepted")
        self._password_failures.pop(caller.uid, None)
        audit["confirmed"] = True

    def decide(self, caller: Caller, action: str, domain: str) -> Decision:
        """The policy's decision; who may use a console may also watch it, unless denied."""
        policy = self.policy.policy
        decision = policy.decide(caller.user, caller.groups, action, domain)
        if (
            action == "watch"
            and not decision.allowed
            and not any(rule.effect == "deny" for rule in decision.matches)
        ):
            console = policy.decide(caller.user, caller.groups, "console", domain)
            if console.allowed:
                return console
        return decision

    def still_attached_allowed(self, attachment: Attachment, domain: str) -> bool:
        """After a policy reload: may this console attachment stay? Groups are looked up anew."""
        caller = attachment.caller
        fresh = resolve_caller(caller.pid, caller.uid, caller.gid)
        if fresh is None:
            return False
        action = "console" if attachment.mode == "write" else "watch"
        return self.decide(fresh, action, domain).allowed

    def may_see_events(self, caller: Caller, domain: str) -> bool:
        return self.decide(caller, "events", domain).allowed

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
    domains = await api.backend.list_domains()
    visible = api.policy.policy.visible_domains(
        request.caller.user, request.caller.groups, [d.name for d in domains]
    )
    return [d.to_json() for d in domains if d.name in visible]


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

    return {
        "domain": target.info.name,
        "state": (await api.backend.info(target.info.uuid)).state.value,
        "mode": mode,
        SESSION_KEY: session,
    }


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

    With a domain, the events of that domain while the caller may still ``events`` it (once
    not, ``revoked`` is True and the session ends). Without, the events of every domain the
    caller may ``events`` at that moment. Either way only the kinds tenants see. The caller's
    groups are looked up anew for every batch (``refresh``), as for any other decision."""

    def __init__(self, api: TenantApi, caller: Caller, domain: str | None) -> None:
        self.api = api
        self.caller: Caller | None = caller
        self.domain = domain
        self.revoked = False

    def refresh(self) -> None:
        caller = self.caller
        if caller is not None:
            self.caller = resolve_caller(caller.pid, caller.uid, caller.gid)
        if self.domain is not None and not self.allows(self.domain):
            self.revoked = True

    def allows(self, domain: str) -> bool:
        return self.caller is not None and self.api.may_see_events(self.caller, domain)

    def shows(self, event: Event) -> bool:
        if self.revoked or event.kind not in TENANT_KINDS or event.domain is None:
            return False
        if self.domain is not None:
            return event.domain == self.domain
        return self.allows(event.domain)


@operation("events", action="events", domain="optional", args=_events_args)
async def op_events(api: TenantApi, request: Request, target: Target | None) -> Any:
    """The kept events of the caller's domains; with ``follow`` the connection then carries
    new ones as they happen (see ``events_session``)."""
    from vpsshell.daemon.events_session import run_events_session

    domain = target.info.name if target is not None else None
    shown = EventFilter(api, request.caller, domain)
    # no await from here on: the history and the follower see every event exactly once
    names = [domain] if domain is not None else api.events.domains()
    history = [e for e in api.events.history(names) if shown.shows(e)]
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
        "domain": domain,
        "events": kept,
        "truncated": len(kept) < len(history),
        "follow": follow,
    }
    if follow:
        follower = api.events.follow()

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await run_events_session(follower, shown, reader, writer)

        result[SESSION_KEY] = session
    return result
