"""The admin socket's operations (root only, mode 0600): reload the policy, list and end console
sessions, inject sim faults.

Only connections from uid 0 (or the helper's own uid, for an unprivileged demo helper) reach
this module; the listener checks the peer credentials before any byte is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from vpsshell import protocol
from vpsshell.backends.base import Backend
from vpsshell.daemon.api import DOMAIN_NAME_RE, MAX_REQUEST_ID
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.consoles import ConsoleManager
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.policy_state import PolicyState


class AdminApi:
    def __init__(
        self, backend: Backend, policy: PolicyState, audit: AuditLog, consoles: ConsoleManager
    ) -> None:
        self.consoles = consoles
        self.backend = backend
        self.policy = policy
        self.audit = audit

    async def handle(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> dict[str, Any]:
        untrusted_id = untrusted.get("id")
        request_id = (
            untrusted_id
            if type(untrusted_id) is int and 0 <= untrusted_id < MAX_REQUEST_ID  # not a bool
            else None
        )
        op = untrusted.get("op")
        args = untrusted.get("args") if isinstance(untrusted.get("args"), dict) else {}
        assert isinstance(args, dict)
        result: Any
        if op == "reload":
            policy = await self.policy.reload_async()
            result = {"rules": len(policy.rules), "errors": [str(e) for e in policy.errors]}
        elif op == "crash" and hasattr(self.backend, "inject_crash"):
            domain = args.get("domain")
            info = (
                await self.backend.lookup(domain)
                if isinstance(domain, str) and DOMAIN_NAME_RE.match(domain)
                else None
            )
            if info is None:
                return protocol.reply_error(request_id, "failed", "no such domain")
            await self.backend.inject_crash(info.uuid)
            result = {"domain": info.name}
        elif op == "sessions":
            result = self.consoles.describe()
        elif op == "kick":
            untrusted_id = args.get("id")
            untrusted_user = args.get("user")
            result = {
                "kicked": self.consoles.kick(
                    attachment_id=untrusted_id if isinstance(untrusted_id, int) else None,
                    user=untrusted_user if isinstance(untrusted_user, str) else None,
                )
            }
        else:
            return protocol.reply_error(request_id, "usage", "unknown admin operation")
        self.audit.write(
            socket="admin",
            uid=caller.uid,
            user=caller.user,
            pid=caller.pid,
            action=f"admin:{op}",
            decision="allow",
            result="ok",
        )
        return protocol.reply_ok(request_id if request_id is not None else 0, result)
