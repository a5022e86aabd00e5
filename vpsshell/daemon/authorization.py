"""Where a tenant request is authorized: every "may this caller do this to that domain" of the
helper is answered here, and nowhere else.

The answer itself comes from the policy engine (``Policy.decide``, which ``vpsshell-admin
policy explain/who/list/test`` also answer with); this module adds only what the helper must
do around it: the caller as NSS says it is now (never as it was at connect time, never as the
client says), the ``confirm=password`` and ``confirm=totp`` steps with their lockouts, "does
not exist" answered exactly like "not allowed", the per-user decision of self-service actions
(``keys``), and the decision taken again after every await (a password check, the
backend's lookup), so that a revocation, an expired rule or a group change that lands
meanwhile stops the action. Sessions that outlive their request (attached consoles, events
followers) are re-authorized with the same functions. It never acts on a domain.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from vpsshell.backends.base import Backend
from vpsshell.daemon.accounts import AccountChecker
from vpsshell.daemon.confirm import Outcome, PasswordChecker
from vpsshell.daemon.consoles import Attachment
from vpsshell.daemon.operation import Request, Target
from vpsshell.daemon.peer import Caller, CallerLookup
from vpsshell.daemon.policy_state import PolicyState
from vpsshell.daemon.totp import TotpChecker
from vpsshell.errors import ConfirmRequired, Denied, TemporaryFailure, not_found_or_denied
from vpsshell.policy import Decision
from vpsshell.policy.engine import allowed_by_self_service
from vpsshell.policy.model import SELF_SERVICE_ACTIONS


class Authorizer:
    def __init__(
        self,
        policy: PolicyState,
        backend: Backend,
        passwords: PasswordChecker,
        accounts: AccountChecker | None = None,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.passwords = passwords
        self.accounts = accounts
        # ``keys_self_service``: a tenant no rule names for ``keys`` may still manage their own
        # (a deny rule, or this off, stops it; a grant with ``confirm=`` adds its step)
        self.keys_by_default = True
        self.callers = CallerLookup()
        self.totp: TotpChecker | None = None  # confirm=totp; set where the helper is assembled

    def current_caller(self, caller: Caller, audit: dict[str, Any]) -> Caller:
        """``caller`` with its groups as NSS says now, not at connect time; Denied if the
        uid has no passwd entry any more."""
        fresh = self.callers.fresh(caller)
        if fresh is None:
            audit["decision"] = "deny"
            audit["reason"] = "uid has no passwd entry any more"
            raise Denied("unknown user")
        return fresh

    async def authorize(
        self, request: Request, action: str | None, audit: dict[str, Any]
    ) -> tuple[Request, Target | None]:
        """The decision for the request's ``action`` on its domain, taken again after every
        await (a password check, the backend's lookup): a revocation, an expired rule or a
        group change that lands meanwhile stops the action. Returns the request with the
        caller as last looked up, and the domain it may act on."""
        if action in SELF_SERVICE_ACTIONS:
            return await self._authorize_self_service(request, action, audit), None
        if action is None or request.domain is None:
            audit["decision"] = "allow"
            return request, None
        domain = request.domain
        decision = self.decide(request.caller, action, domain)
        audit["rule"] = decision.deciding.location if decision.deciding else None
        if not decision.allowed:
            audit["decision"] = "deny"
            audit["reason"] = decision.reason
            raise not_found_or_denied(domain)
        if decision.confirm:
            await self._confirm(request, action, audit, decision.confirm)
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

    async def _authorize_self_service(
        self, request: Request, action: str, audit: dict[str, Any]
    ) -> Request:
        """An action on the caller's own account (``keys``): the policy's per-user decision,
        its ``confirm=`` step, and the decision taken again after it."""
        decision = self.decide(request.caller, action, "")
        audit["rule"] = decision.deciding.location if decision.deciding else None
        if allowed_by_self_service(decision, self.keys_by_default):
            audit["rule"] = "keys_self_service"
            audit["decision"] = "allow"
            return request
        if not decision.allowed:
            audit["decision"] = "deny"
            audit["reason"] = decision.reason
            raise Denied(f"{action}: permission denied (ask your provider)")
        if decision.confirm:
            await self._confirm(request, action, audit, decision.confirm)
            caller = self.callers.fresh(request.caller)
            again = self.decide(caller, action, "") if caller is not None else None
            if caller is None or again is None or not again.allowed:
                audit["decision"] = "deny"
                audit["reason"] = "access ended while the request waited"
                raise Denied(f"{action}: permission denied (ask your provider)")
            request = request._replace(caller=caller)
        audit["decision"] = "allow"
        return request

    async def _confirm(
        self, request: Request, action: str, audit: dict[str, Any], kind: str = "password"
    ) -> None:
        """``confirm=password``: the tenant's password, checked by PAM, with a lockout
        (``confirm.PasswordChecker``); ``confirm=totp``: a code of the tenant's second
        factor, checked here (``totp.TotpChecker``), with the same lockout's limits."""
        if kind == "totp":
            await self._confirm_code(request, action, audit)
            return
        caller = request.caller
        what = f"{action} {request.domain}" if request.domain else action
        audit["confirm"] = "password"
        if not self.passwords.service:
            audit["decision"] = "deny"
            audit["reason"] = "confirm=password but PAM is off (pam_service)"
            raise Denied(
                f"{request.domain or action}: this action needs a password, which is not set up"
            )
        _refuse_while_locked(self.passwords.locked_for(caller.uid), "password", audit)
        if request.password is None:
            audit["decision"] = "confirm"
            raise ConfirmRequired(f"{what} needs your password")
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

    async def _confirm_code(self, request: Request, action: str, audit: dict[str, Any]) -> None:
        caller = request.caller
        what = f"{action} {request.domain}" if request.domain else action
        audit["confirm"] = "totp"
        checker = self.totp
        if checker is None or not await asyncio.to_thread(checker.enrolled, caller.user):
            audit["decision"] = "deny"
            audit["reason"] = "confirm=totp but no second factor enrolled"
            raise Denied(f"{what} needs a one-time code, and you have none yet: run totp enroll")
        _refuse_while_locked(checker.locked_for(caller.uid), "code", audit)
        if request.password is None:
            audit["decision"] = "confirm"
            raise ConfirmRequired(f"{what} needs a code from your authenticator app")
        if await asyncio.to_thread(checker.check, caller.uid, caller.user, request.password):
            audit["confirmed"] = True
            return
        audit["decision"] = "deny"
        audit["reason"] = "code not accepted"
        locked = checker.locked_for(caller.uid)
        if locked > 0:
            raise TemporaryFailure(f"too many wrong codes; try again in {int(locked) + 1} s")
        raise ConfirmRequired("code not accepted")

    def decide(self, caller: Caller, action: str, domain: str) -> Decision:
        """The policy's decision, and nothing added to it: every rule about who may do what
        (console implies watch among them) is in ``Policy.decide``, which is also what
        ``vpsshell-admin policy explain/who/list/test`` answer with."""
        return self.policy.policy.decide(caller.user, caller.groups, action, domain)

    def granted_domains(self, caller: Caller) -> set[str]:
        """Every domain an active grant of the caller names: the only ones ``list`` and
        ``events`` need to ask the backend about (its cost follows the caller's own domains,
        not every domain of every host)."""
        return self.policy.policy.granted_domains(caller.user, caller.groups)

    def visible_domains(self, caller: Caller, names: Iterable[str]) -> set[str]:
        """Which of ``names`` the caller may see at all (any grant implies ``status``)."""
        return self.policy.policy.visible_domains(caller.user, caller.groups, names)

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

    async def account_refused(self, caller: Caller, max_age: float) -> bool:
        """Does PAM refuse ``caller``'s account now (a verdict up to ``max_age`` old)?"""
        if self.accounts is None:
            return False
        return await self.accounts.refusal(caller.uid, caller.user, max_age) is not None


def _refuse_while_locked(locked: float, secret: str, audit: dict[str, Any]) -> None:
    """Refuse as temporary while the caller is locked out after wrong ``secret``s."""
    if locked > 0:
        audit["decision"] = "deny"
        audit["reason"] = f"{secret} lockout"
        raise TemporaryFailure(f"too many wrong {secret}s; try again in {int(locked) + 1} s")
