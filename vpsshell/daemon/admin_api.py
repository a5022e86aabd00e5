"""The admin socket's operations (root only, mode 0600): reload the policy, list and end console
sessions, name the domains the backend knows, show a gateway's hosts and migrate a domain between
them, inject sim faults.

Only connections from uid 0 (or the helper's own uid, for an unprivileged demo helper) reach
this module; the listener checks the peer credentials before any byte is read. Operations are
declared as the tenant API's are (``operation.Operations``); one that a backend cannot do
(``crash``: only the sim backend injects crashes) does not exist on that helper. Every request
gets one audit line, whatever its outcome.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vpsshell import protocol
from vpsshell.backends.base import Backend
from vpsshell.checks import is_domain_name, is_host_label
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits
from vpsshell.daemon.consoles import ConsoleManager
from vpsshell.daemon.operation import Operations, request_id_of
from vpsshell.daemon.peer import Caller, resolve_caller
from vpsshell.daemon.policy_state import PolicyState
from vpsshell.daemon.server import Answer
from vpsshell.daemon.web_tokens import NEEDS_CONFIRMATION, ConsoleLinks
from vpsshell.errors import ActionFailed, Denied, UsageError, VpsError

log = logging.getLogger("vpsshell.admin")

AdminHandler = Callable[["AdminApi", dict[str, Any]], Awaitable[Any]]
ADMIN_OPERATIONS: Operations[AdminHandler] = Operations()
operation = ADMIN_OPERATIONS.declare


def _ignored_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    return {}  # root's own tool; arguments it does not need are not an error


class AdminApi:
    def __init__(
        self,
        backend: Backend,
        policy: PolicyState,
        audit: AuditLog,
        consoles: ConsoleManager,
        limits: Limits | None = None,
        links: ConsoleLinks | None = None,
    ) -> None:
        self.links = links
        self.consoles = consoles
        self.backend = backend
        self.policy = policy
        self.audit = audit
        self.limits = limits or Limits()

    async def handle(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> Answer:
        request_id = request_id_of(untrusted)
        untrusted_op = untrusted.get("op")
        found = ADMIN_OPERATIONS.get(untrusted_op, self.backend)
        audit: dict[str, Any] = {
            "socket": "admin",
            "uid": caller.uid,
            "user": caller.user,
            "pid": caller.pid,
            "action": f"admin:{found.name if found else repr(untrusted_op)[:64]}",
            "decision": "allow" if found else "invalid",
        }
        try:
            if found is None:
                raise UsageError("unknown admin operation")
            untrusted_args = untrusted.get("args")
            args = found.check_args(
                untrusted_args if isinstance(untrusted_args, dict) else {}, self.limits
            )
            result = await found.handler(self, args)
            audit["result"] = "ok"
            return Answer(protocol.reply_ok(request_id if request_id is not None else 0, result))
        except VpsError as exc:
            audit["result"] = exc.kind
            audit["message"] = exc.message
            return Answer(protocol.reply_error(request_id, exc.kind, exc.message))
        except asyncio.CancelledError:
            audit["result"] = "cancelled"
            raise
        except Exception:
            log.exception("admin request %s failed", audit["action"])
            audit["result"] = "internal-error"
            return Answer(
                protocol.reply_error(request_id, "failed", "internal error in the helper")
            )
        finally:
            self.audit.write(**audit)


@operation("reload", args=_ignored_args)
async def op_reload(api: AdminApi, args: dict[str, Any]) -> Any:
    policy = await api.policy.reload_async()
    return {"rules": len(policy.rules), "errors": [str(e) for e in policy.errors]}


@operation("domains", args=_ignored_args)
async def op_domains(api: AdminApi, args: dict[str, Any]) -> Any:
    """Every domain name the backend knows (admins only: tenants must never learn other
    tenants' names), and the hosts that do not answer now, whose domains may be missing."""
    names = sorted({info.name for info in await api.backend.list_domains()})
    hosts = api.backend.host_states() if hasattr(api.backend, "host_states") else []
    missing = [host["name"] for host in hosts if host.get("state") != "connected"]
    return {"domains": names, "hosts_not_answering": missing}


def _crash_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    domain = untrusted.get("domain")
    return {"domain": domain if is_domain_name(domain) else None}


@operation("crash", args=_crash_args, when=lambda backend: hasattr(backend, "inject_crash"))
async def op_crash(api: AdminApi, args: dict[str, Any]) -> Any:
    info = await api.backend.lookup(args["domain"]) if args["domain"] is not None else None
    if info is None:
        raise ActionFailed("no such domain")
    await api.backend.inject_crash(info.uuid)  # type: ignore[attr-defined]
    return {"domain": info.name}


@operation("sessions", args=_ignored_args)
async def op_sessions(api: AdminApi, args: dict[str, Any]) -> Any:
    return api.consoles.describe()


def _kick_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    untrusted_id = untrusted.get("id")
    untrusted_user = untrusted.get("user")
    return {
        "attachment_id": untrusted_id if type(untrusted_id) is int else None,  # not a bool
        "user": untrusted_user if isinstance(untrusted_user, str) else None,
    }


@operation("kick", args=_kick_args)
async def op_kick(api: AdminApi, args: dict[str, Any]) -> Any:
    return {"kicked": api.consoles.kick(**args)}


@operation("hosts", args=_ignored_args, when=lambda backend: hasattr(backend, "host_states"))
async def op_hosts(api: AdminApi, args: dict[str, Any]) -> Any:
    return api.backend.host_states()  # type: ignore[attr-defined]


MIGRATE_TIMEOUT_SECONDS = 600
MIGRATE_TIMEOUT_MAX_SECONDS = 3600


def _migrate_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    domain, host = untrusted.get("domain"), untrusted.get("host")
    timeout = untrusted.get("timeout", MIGRATE_TIMEOUT_SECONDS)
    if not is_domain_name(domain):
        raise UsageError("migrate: a domain name is needed")
    if not is_host_label(host):
        raise UsageError("migrate: a host label (as vpsshell-admin hosts shows) is needed")
    if type(timeout) is not int or not 1 <= timeout <= MIGRATE_TIMEOUT_MAX_SECONDS:
        raise UsageError(f"migrate: timeout is 1 to {MIGRATE_TIMEOUT_MAX_SECONDS} seconds")
    return {"domain": domain, "host": host, "timeout": timeout}


@operation("migrate", args=_migrate_args, when=lambda backend: hasattr(backend, "migrate"))
async def op_migrate(api: AdminApi, args: dict[str, Any]) -> Any:
    """A live migration to another host of the backend (see ``LibvirtBackend.migrate``)."""
    info = await api.backend.lookup(args["domain"])
    if info is None:
        raise ActionFailed(f"no such domain: {args['domain']}")
    started = time.monotonic()
    moved = await api.backend.migrate(  # type: ignore[attr-defined]
        info.uuid, args["host"], float(args["timeout"])
    )
    return {
        "domain": moved.to_json(),
        "from": info.host,
        "seconds": round(time.monotonic() - started, 1),
    }


def _console_url_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    user, domain = untrusted.get("user"), untrusted.get("domain")
    watch, takeover = untrusted.get("watch", False), untrusted.get("takeover", False)
    seconds = untrusted.get("seconds", limits.web_token_seconds)
    if not isinstance(user, str) or not user or len(user) > 256:
        raise UsageError("console-url: a user name is needed")
    if not is_domain_name(domain):
        raise UsageError("console-url: a domain name is needed")
    if not isinstance(watch, bool) or not isinstance(takeover, bool) or (watch and takeover):
        raise UsageError("console-url: watch or takeover, true or false, not both")
    high = limits.web_token_max_seconds
    if type(seconds) is not int or not 1 <= seconds <= high:
        raise UsageError(f"console-url: the link lives 1 to {high} seconds")
    mode = "watch" if watch else "write"
    return {"user": user, "domain": domain, "mode": mode, "takeover": takeover, "seconds": seconds}


@operation("console-url", args=_console_url_args)
async def op_console_url(api: AdminApi, args: dict[str, Any]) -> Any:
    """A one-time console link for a panel to hand to USER (``web_tokens``): minted only if
    the policy lets USER open that console now, and decided again when it is used."""
    if api.links is None or not api.links.enabled:
        raise ActionFailed("the web console is not set up on this host (web_socket, web_url)")
    try:
        entry = pwd.getpwnam(args["user"])
    except KeyError:
        raise ActionFailed(f"no such user: {args['user']}") from None
    caller = resolve_caller(0, entry.pw_uid, entry.pw_gid)
    action = "console" if args["mode"] == "write" else "watch"
    info = await api.backend.lookup(args["domain"])
    groups = caller.groups if caller is not None else ()
    decision = api.policy.policy.decide(entry.pw_name, groups, action, args["domain"])
    if caller is None or info is None or not decision.allowed:
        raise Denied(f"{entry.pw_name} may not {action} {args['domain']} (policy explain says why)")
    if decision.confirm is not None:
        raise Denied(NEEDS_CONFIRMATION)
    url, minted = api.links.mint(
        caller,
        info.name,
        args["mode"],
        takeover=args["takeover"],
        seconds=args["seconds"],
        minted_by="admin",
    )
    api.audit.write(
        action="web-token-minted",
        decision="admin",
        result="ok",
        user=caller.user,
        uid=caller.uid,
        domain=info.name,
        mode=args["mode"],
        takeover=args["takeover"],
        token=minted.token_id,
        minted_by="admin",
    )
    return {
        "url": url,
        "user": caller.user,
        "domain": info.name,
        "mode": args["mode"],
        "expires_in": args["seconds"],
        "token": minted.token_id,
    }
