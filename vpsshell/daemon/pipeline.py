"""The tenant request path: every request rate limited, sanitized, authorized, acted on, audited.

For each request message from the tenant socket: the caller's request budget is charged (every
message counts, well-formed or not); the envelope and arguments are checked (values from the
socket are ``untrusted_*`` until then; each operation's own checks are in ``operations``); the
``Authorizer`` decides, asks for a password where the policy wants one, and resolves the
domain to a backend UUID ("not allowed" and "does not exist" are the same answer); actions that
change a domain wait for a writable audit log; the admin's pre-action hooks (``pre_hooks``) may
then refuse the action; only then does the operation act, within a timeout. Exactly one reply
and one audit line come out of every request, whatever happens; a refusal by the policy also
becomes a ``denied`` event. Nothing here decides who may do what.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from vpsshell import protocol
from vpsshell.backends.base import Backend
from vpsshell.checks import is_domain_name
from vpsshell.daemon.accounts import AccountChecker
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.authorization import Authorizer
from vpsshell.daemon.config import Limits
from vpsshell.daemon.confirm import PasswordChecker
from vpsshell.daemon.consoles import ConsoleManager
from vpsshell.daemon.events import EventRecord
from vpsshell.daemon.operation import (
    Operation,
    ReplyThenSession,
    Request,
    Target,
    request_id_of,
)
from vpsshell.daemon.operations import TENANT_OPERATIONS, TenantHandler, TenantServices
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.policy_state import PolicyState
from vpsshell.daemon.pre_hooks import PreActionHooks
from vpsshell.daemon.ratelimit import request_bucket
from vpsshell.daemon.server import Answer
from vpsshell.errors import TemporaryFailure, UsageError, VpsError, not_found_or_denied

log = logging.getLogger("vpsshell.api")

PASSWORD_MAX_CHARS = 512
RATE_LIMITED_DELAY_MAX_SECONDS = 1.0  # a request over budget waits this long for its refusal
# actions that change a domain: refused while the audit log cannot be written (fail closed)
STATE_CHANGING_ACTIONS = frozenset(
    {"start", "shutdown", "reboot", "poweroff", "reset", "sysrq", "console"}
)
# self-service changes to a tenant's own access (no domain action): audited like actions
STATE_CHANGING_OPERATIONS = frozenset({"keys-add", "keys-remove", "totp-confirm"})


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
        pre_hooks: PreActionHooks | None = None,
    ) -> None:
        self.backend = backend
        self.audit = audit
        self.limits = limits
        self.events = events
        self.audit_fail_open = audit_fail_open
        self.pre_hooks = pre_hooks
        self.authorizer = Authorizer(policy, backend, passwords, accounts)
        self.services = TenantServices(backend, self.authorizer, consoles, events, limits)
        self.rate = request_bucket(limits.requests_per_minute)

    async def handle(
        self,
        caller: Caller,
        untrusted: dict[str, Any],
        progress: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> Answer:
        """Answer one request message: always a reply (and, after a console or events
        request, the session that takes over the connection); writes one audit line."""
        started = time.monotonic()
        request_id = request_id_of(untrusted)
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
            return Answer(await self._rate_limited(caller, untrusted, request_id))
        try:
            fresh = self.authorizer.current_caller(caller, audit)
            request, operation = self._sanitize(fresh, untrusted, request_id, progress, audit)
            request, target = await self.authorizer.authorize(request, operation.action, audit)
            changes = (
                operation.action in STATE_CHANGING_ACTIONS
                or operation.name in STATE_CHANGING_OPERATIONS
            )
            if changes and not self._audit_ready(audit):
                raise TemporaryFailure(
                    "the audit log cannot be written, so actions are refused for now; "
                    "your provider has been told"
                )
            # the hooks come before the action itself: not before minting a web console link
            # (webconsole), whose console runs its pre-console hooks when the link opens it
            if target is not None and operation.action == operation.name:
                request = await self._pre_action_hooks(request, operation.action, target)
            # asyncio.timeout, not wait_for: no task of its own and no extra turns of the loop
            # for every request (and on 3.11 wait_for can lose a cancellation, gh-86296)
            async with asyncio.timeout(
                self.limits.action_timeout_seconds + (request.args.get("wait") or 0)
            ):
                result = await operation.handler(self.services, request, target)
            audit["result"] = "ok"
            if isinstance(result, ReplyThenSession):  # the server runs it after the reply
                return Answer(protocol.reply_ok(request.id, result.result), result.session)
            return Answer(protocol.reply_ok(request.id, result))
        except VpsError as exc:
            audit["result"] = exc.kind
            audit["message"] = exc.message
            return Answer(protocol.reply_error(request_id, exc.kind, exc.message))
        except TimeoutError:
            audit["result"] = "temporary"
            audit["message"] = "timed out"
            return Answer(
                protocol.reply_error(request_id, "temporary", "timed out; try again later")
            )
        except asyncio.CancelledError:
            audit["result"] = "cancelled"
            raise
        except ConnectionError:  # a progress message found the client gone (Ctrl-C, ssh hangup)
            audit["result"] = "cancelled"
            audit["message"] = "the client left before the request finished"
            return Answer(protocol.reply_error(request_id, "temporary", "cancelled"))
        except Exception:
            log.exception("request %r from %s failed", audit.get("action"), caller.user)
            audit["result"] = "internal-error"
            return Answer(
                protocol.reply_error(request_id, "failed", "internal error in the helper")
            )
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

    async def _pre_action_hooks(self, request: Request, action: str, target: Target) -> Request:
        """Run the admin's pre-action hooks (``pre_hooks``), which may refuse; if any ran,
        the decision is taken again, as ``authorize`` does after each of its awaits: a
        revocation that landed while they ran stops the action."""
        assert request.domain is not None
        if self.pre_hooks is None or not await self.pre_hooks.check(request, action, target):
            return request
        caller = self.authorizer.callers.fresh(request.caller)
        if caller is None or not self.authorizer.decide(caller, action, request.domain).allowed:
            request.audit["decision"] = "deny"
            request.audit["reason"] = "access ended while the pre-action hooks ran"
            raise not_found_or_denied(request.domain)
        return request._replace(caller=caller)

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
    ) -> tuple[Request, Operation[TenantHandler]]:
        untrusted_version = untrusted.get("v")
        # type() and not ==: True == 1 == 1.0 in Python, and neither is version 1
        if type(untrusted_version) is not int or untrusted_version != protocol.PROTOCOL_VERSION:
            raise UsageError(
                f"unsupported protocol version (this helper speaks {protocol.PROTOCOL_VERSION})"
            )
        if request_id is None:
            raise UsageError("request id missing or invalid")
        untrusted_op = untrusted.get("op")
        untrusted_args = untrusted.get("args", {})
        operation = TENANT_OPERATIONS.get(untrusted_op, self.backend)
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
            if not is_domain_name(untrusted_domain):
                audit["domain"] = repr(untrusted_domain)[:80]
                raise UsageError("invalid domain name")
            domain = untrusted_domain
            audit["domain"] = domain
        untrusted_args = dict(untrusted_args)
        untrusted_password = untrusted_args.pop("password", None)
        if untrusted_password is not None and (
            not isinstance(untrusted_password, str)
            or len(untrusted_password) > PASSWORD_MAX_CHARS
            or "\0" in untrusted_password
        ):
            raise UsageError("password: expected a string")
        args = operation.check_args(untrusted_args, self.limits)

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
