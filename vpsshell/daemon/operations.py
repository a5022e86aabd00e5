"""The tenant API's operations: each declared once, with the check of its arguments.

A handler runs only after the request path (``pipeline``) has sanitized the request and the
``Authorizer`` has allowed it: ``target`` is then the domain it may act on, resolved to its
backend UUID, and the handler acts on that UUID only. Handlers return the reply's result
(data, never text to print), or a ``ReplyThenSession`` when the connection goes on as a
console or events session. They never decide who may do what; where a result depends on the
policy (``list``, ``events``), they ask the ``Authorizer``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from vpsshell import __version__, protocol
from vpsshell.backends.base import Backend, DomainInfo, DomainState
from vpsshell.checks import is_sysrq_key
from vpsshell.daemon.authorization import Authorizer
from vpsshell.daemon.config import Limits
from vpsshell.daemon.console_session import run_console_session
from vpsshell.daemon.consoles import ConsoleManager
from vpsshell.daemon.event_filter import EventFilter
from vpsshell.daemon.events import EventRecord
from vpsshell.daemon.events_session import run_events_session
from vpsshell.daemon.operation import (
    Operations,
    ReplyThenSession,
    Request,
    Target,
    bool_arg,
    int_arg,
    int_value,
    refuse_unknown,
)
from vpsshell.daemon.recordings import MAX_DIMENSION, send_recording
from vpsshell.daemon.web_tokens import NEEDS_CONFIRMATION, ConsoleLinks
from vpsshell.errors import ActionFailed, Denied, TemporaryFailure, UsageError
from vpsshell.recording_format import is_recording_id
from vpsshell.since import parse_since

if TYPE_CHECKING:
    from vpsshell.daemon.self_service import SelfService

WAIT_POLL_SECONDS = 0.2
REPLY_BUDGET = protocol.MAX_FRAME_BYTES - 1024  # for the result; the rest is the envelope
PROGRESS_EVERY_SECONDS = 5.0
LOG_DEFAULT_LINES = 100
LOG_MAX_LINES = 10000
EVENTS_DEFAULT_LINES = 100
EVENTS_MAX_LINES = 10000


@dataclass
class TenantServices:
    """What a tenant operation may use: the backend, consoles, events, and the authorizer
    for results that depend on the policy."""

    backend: Backend
    authorizer: Authorizer
    consoles: ConsoleManager
    events: EventRecord
    limits: Limits
    links: ConsoleLinks | None = None  # one-time console links for vpsshell-web, if set up
    via: str | None = None  # "web": this request path serves links redeemed by vpsshell-web
    self_service: SelfService | None = None  # keys and totp (``self_service``), if set up
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock_for(self, uuid: str) -> asyncio.Lock:
        """One power action per domain at a time."""
        lock = self._locks.get(uuid)
        if lock is None:
            lock = self._locks[uuid] = asyncio.Lock()
        return lock


T = TypeVar("T")
TenantHandler = Callable[[TenantServices, Request, Target | None], Awaitable[Any]]
TENANT_OPERATIONS: Operations[TenantHandler] = Operations()
operation = TENANT_OPERATIONS.declare


def _newest_that_fit(items: list[T]) -> list[T]:
    """The newest of ``items`` whose JSON fits in one reply frame (JSON escaping can make a
    console line up to six times longer)."""
    budget, kept = REPLY_BUDGET, []
    for item in reversed(items):
        budget -= len(json.dumps(item)) + 1
        if budget < 0:
            break
        kept.append(item)
    kept.reverse()
    return kept


def _message(info: DomainInfo, verb: str) -> dict[str, Any]:
    return {"domain": info.name, "state": info.state.value, "message": f"{info.name}: {verb}"}


def _shutdown_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "wait", "force"})
    force = bool_arg(untrusted, "force")
    wait: int | None = None
    if "wait" in untrusted or force:
        untrusted_wait = untrusted.get("wait")
        high = limits.shutdown_wait_max_seconds
        wait = (
            limits.shutdown_wait_default_seconds
            if untrusted_wait is None
            else int_value(untrusted_wait, "wait", 0, high, f"0..{high} seconds")
        )
    return {"wait": wait, "force": force}


async def _power_action(
    api: TenantServices,
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
async def op_refused(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The shell reports a command it refused (a tenant ran ``sftp-server``, ``scp``...)."""
    request.audit["decision"] = "refused"
    request.audit["line"] = request.args["line"]
    return {}


@operation("list")
async def op_list(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The domains the caller may ``status``. One whose ``status`` wants a password
    (``confirm=``) is listed by name only, with ``"confirm"``: its state and the rest are
    what ``status DOMAIN`` shows once the password is given."""
    caller = request.caller
    domains = await api.backend.domains_named(api.authorizer.granted_domains(caller))
    visible = api.authorizer.visible_domains(caller, [d.name for d in domains])
    listed: list[dict[str, Any]] = []
    for domain in domains:
        if domain.name not in visible:
            continue
        confirm = api.authorizer.decide(caller, "status", domain.name).confirm
        listed.append(
            {"name": domain.name, "confirm": confirm} if confirm is not None else domain.to_json()
        )
    return listed


@operation("status", action="status", domain="required")
async def op_status(api: TenantServices, request: Request, target: Target | None) -> Any:
    assert target is not None
    return (await api.backend.info(target.info.uuid)).to_json()


@operation("start", action="start", domain="required")
async def op_start(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.start, "starting")


@operation("reboot", action="reboot", domain="required")
async def op_reboot(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.reboot, "rebooting")


@operation("poweroff", action="poweroff", domain="required")
async def op_poweroff(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.poweroff, "powered off")


@operation("reset", action="reset", domain="required")
async def op_reset(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _power_action(api, target, api.backend.reset, "reset")


@operation("shutdown", action="shutdown", domain="required", args=_shutdown_args)
async def op_shutdown(api: TenantServices, request: Request, target: Target | None) -> Any:
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
async def op_whoami(api: TenantServices, request: Request, target: Target | None) -> Any:
    caller = request.caller
    return {"user": caller.user, "uid": caller.uid, "groups": list(caller.groups)}


@operation("version")
async def op_version(api: TenantServices, request: Request, target: Target | None) -> Any:
    return {
        "helper": __version__,
        "protocol": protocol.PROTOCOL_VERSION,
        "backend": api.backend.kind,
    }


def _console_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "takeover", "replay", "rows", "cols"})
    takeover = bool_arg(untrusted, "takeover")
    default = limits.console_replay_default_bytes
    replay = int_arg(untrusted, "replay", default, 0, None, "a number of bytes")
    # the tenant's window, for the session's recording; 0 (a pty never sized): not known
    rows = int_arg(untrusted, "rows", 0, 0, MAX_DIMENSION)
    cols = int_arg(untrusted, "cols", 0, 0, MAX_DIMENSION)
    size = (rows, cols) if rows and cols else None
    return {"takeover": takeover, "replay": min(replay, limits.console_ring_bytes), "size": size}


async def _attach(api: TenantServices, request: Request, target: Target | None, mode: str) -> Any:
    assert target is not None
    # Everything that can fail or wait comes first: from hub.attach() on nothing awaits, so an
    # attachment is only ever made by a request whose reply carries the session that ends it.
    state = (await api.backend.info(target.info.uuid)).state.value
    hub = api.consoles.hub_for(target.info)
    attachment = api.consoles.new_attachment(request.caller, mode)
    attachment.size = request.args["size"]
    attachment.via = api.via
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

    return ReplyThenSession({"domain": target.info.name, "state": state, "mode": mode}, session)


@operation("console", action="console", domain="required", args=_console_args)
async def op_console(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _attach(api, request, target, "write")


@operation("watch", action="watch", domain="required", args=_console_args)
async def op_watch(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _attach(api, request, target, "watch")


def _webconsole_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "takeover"})
    return {"takeover": bool_arg(untrusted, "takeover")}


async def _mint_link(
    api: TenantServices, request: Request, target: Target | None, mode: str
) -> Any:
    """A one-time console link (``web_tokens``) for the caller, who was just authorized for
    ``mode`` on the domain; using it decides again. The token is in the reply only."""
    assert target is not None
    if api.links is None or not api.links.enabled:
        raise ActionFailed("the web console is not set up on this host")
    action = "console" if mode == "write" else "watch"
    if api.authorizer.decide(request.caller, action, target.info.name).confirm is not None:
        raise Denied(NEEDS_CONFIRMATION)  # the redemption would ask the browser for it
    takeover = bool(request.args.get("takeover")) and mode == "write"
    url, minted = api.links.mint(request.caller, target.info.name, mode, takeover=takeover)
    request.audit["web"] = {"mode": mode, "takeover": takeover, "token": minted.token_id}
    seconds = max(0, round(minted.expires - time.time()))
    return {"domain": target.info.name, "mode": mode, "url": url, "expires_in": seconds}


@operation("webconsole", action="console", domain="required", args=_webconsole_args)
async def op_webconsole(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _mint_link(api, request, target, "write")


@operation("webwatch", action="watch", domain="required")
async def op_webwatch(api: TenantServices, request: Request, target: Target | None) -> Any:
    return await _mint_link(api, request, target, "watch")


def _since_arg(untrusted: dict[str, Any]) -> str:
    """``since`` as UTC text (see ``parse_since``), or "" when not given."""
    untrusted_since = untrusted.get("since", "")
    if not isinstance(untrusted_since, str):
        raise UsageError("since: expected a time (ISO 8601 or -10m)")
    return parse_since(untrusted_since) if untrusted_since else ""


def _log_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "lines", "since", "timestamps"})
    return {
        "lines": int_arg(untrusted, "lines", LOG_DEFAULT_LINES, 1, LOG_MAX_LINES),
        "since": _since_arg(untrusted),
        "timestamps": bool_arg(untrusted, "timestamps"),
    }


@operation("log", action="log", domain="required", args=_log_args)
async def op_log(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The last lines of the domain's console log. With ``timestamps``: ``entries`` instead,
    each line with its time and the attach/detach markers; ``since`` keeps what came after."""
    assert target is not None
    hub = api.consoles.hub_for(target.info)
    args = request.args
    reply: dict[str, Any] = {"domain": target.info.name}
    if not args["since"] and not args["timestamps"]:
        lines = await asyncio.to_thread(hub.log.tail, args["lines"])
    else:
        found = await asyncio.to_thread(
            hub.log.entries, args["lines"], args["since"], markers=args["timestamps"]
        )
        if args["timestamps"]:
            entries = _newest_that_fit(found)
            return {**reply, "entries": entries, "truncated": len(entries) < len(found)}
        lines = [str(entry["text"]) for entry in found]
    kept = _newest_that_fit(lines)
    return {**reply, "lines": kept, "truncated": len(kept) < len(lines)}


@operation("recordings", action="log", domain="required")
async def op_recordings(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The console recordings of the domain (its UUID now: none of a domain that held the
    name before), oldest first."""
    assert target is not None
    store = api.consoles.recordings
    found = store.for_domain(target.info.uuid) if store is not None else []
    now = time.time()
    kept = _newest_that_fit([info.to_json(now) for info in found])
    return {"domain": target.info.name, "recordings": kept, "truncated": len(kept) < len(found)}


def _recording_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"id"})
    untrusted_id = untrusted.get("id")
    if not is_recording_id(untrusted_id):
        raise UsageError("id: expected a recording ID such as 20261205-101500-3fa2c1")
    return {"id": untrusted_id}


@operation("recording", args=_recording_args)
async def op_recording(api: TenantServices, request: Request, target: Target | None) -> Any:
    """One recording as asciicast v2: after the reply the connection carries it in
    ``CONSOLE_DATA`` frames, then a ``closed`` message (``complete``). Allowed as ``log`` on the
    recording's domain, while that name still stands for the recorded UUID; a recording that
    does not exist and one that is not the caller's get the same answer."""
    rec_id: str = request.args["id"]
    store = api.consoles.recordings
    info = store.get(rec_id) if store is not None else None
    unknown = Denied(f"{rec_id}: no such recording or permission denied")
    if store is None or info is None:
        raise unknown
    request.audit["recording"] = rec_id
    request.audit["domain"] = info.domain
    try:
        _, target = await api.authorizer.authorize(
            request._replace(domain=info.domain), "log", request.audit
        )
    except Denied:
        raise unknown from None
    if target is None or target.info.uuid != info.uuid:
        request.audit["decision"] = "deny"
        request.audit["reason"] = "the name stands for another domain now"
        raise unknown
    directory = store.directory

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await send_recording(directory, info, writer)

    return ReplyThenSession({"id": rec_id, "domain": info.domain}, session)


def _sysrq_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "key"})
    untrusted_key = untrusted.get("key")
    if not is_sysrq_key(untrusted_key):
        raise UsageError("key: expected one of 0-9 or a-z")
    return {"key": untrusted_key}


@operation("sysrq", action="sysrq", domain="required", args=_sysrq_args)
async def op_sysrq(api: TenantServices, request: Request, target: Target | None) -> Any:
    key = request.args["key"]

    async def send(uuid: str) -> None:
        await api.backend.sysrq(uuid, key)

    result = await _power_action(api, target, send, f"sent SysRq {key}")
    return result


def _events_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"domain", "follow", "lines", "since"})
    follow = bool_arg(untrusted, "follow")
    lines = int_arg(untrusted, "lines", EVENTS_DEFAULT_LINES, 0, EVENTS_MAX_LINES)
    return {"follow": follow, "lines": lines, "since": _since_arg(untrusted)}


@operation("events", action="events", domain="optional", args=_events_args)
async def op_events(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The kept events of the caller's domains; with ``follow`` the connection then carries
    new ones as they happen (see ``events_session``). Without a domain, ``withheld`` names
    the domains whose events were left out because their grant wants a password."""
    caller = request.caller
    if target is not None:
        names = {target.info.uuid: target.info.name}
    else:  # the UUID each of the caller's names stands for now
        granted = api.authorizer.granted_domains(caller)
        names = {d.uuid: d.name for d in await api.backend.domains_named(granted)}
    shown = EventFilter(
        api.authorizer,
        caller,
        target.info if target is not None else None,
        names,
        recheck_seconds=api.limits.session_recheck_seconds,
        account_max_age=api.limits.account_recheck_seconds,
    )
    follow: bool = request.args["follow"]
    # the follower is made before the history is read, and the history ends at the last event
    # recorded now: every event is in exactly one of them, whatever arrives during the read
    follower = api.events.follow() if follow else None
    try:
        # only the domains whose events may be shown are read, so ``lines`` counts shown ones
        shown_uuids = [u for u, name in names.items() if target is not None or shown.allows(name)]
        found = await api.events.kept(shown_uuids, request.args["since"], request.args["lines"])
    except BaseException:
        if follower is not None:
            api.events.unfollow(follower)
        raise
    history = [event for event in found if shown.shows_kept(event, names[event.uuid or ""])]
    kept = _newest_that_fit([event.to_json() for event in history])
    request.audit["follow"] = follow
    request.audit["events"] = len(kept)
    result: dict[str, Any] = {
        "domain": shown.domain,
        "events": kept,
        "truncated": len(kept) < len(history),
        "follow": follow,
    }
    if target is None:
        visible = api.authorizer.visible_domains(caller, names.values())
        result["withheld"] = sorted(
            name
            for name in visible
            if api.authorizer.may_see_events(caller, name, confirmed=True)
            and not shown.allows(name)
        )
    if follower is not None:

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await run_events_session(follower, shown, reader, writer, api.limits)

        return ReplyThenSession(result, session)
    return result


# the self-service operations (keys, totp) are declared in a module of their own
from vpsshell.daemon import self_service as _self_service  # noqa: E402, F401
