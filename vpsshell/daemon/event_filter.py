"""Which events a tenant's ``events`` request shows, decided per event when it is sent.

Kept events are matched by UUID: a kept event is shown only if its domain still exists and the
name it has now is one the request covers, whatever name the event was recorded under. So a
name given to another domain (a new UUID) shows none of the old domain's events, a domain that
is gone shows none, and a renamed domain keeps its own. New events carry the name their domain
has as they happen.

Every "may the caller see this domain's events" is asked of the ``Authorizer``; this module
only applies the answers to events, and never decides by itself who may see what.
"""

from __future__ import annotations

from vpsshell.backends.base import DomainInfo
from vpsshell.daemon.authorization import Authorizer
from vpsshell.daemon.events import TENANT_KINDS, Event
from vpsshell.daemon.peer import Caller


class EventFilter:
    """The events one ``events`` request (and its follower) may show.

    With a domain (authorized, and confirmed if its grant says ``confirm=``): that domain's
    events, while the caller may still ``events`` it (once not, ``revoked`` is True and the
    session ends); new events only while the name still stands for the same UUID. Without:
    the events of every domain the caller may ``events`` at that moment, except a domain whose
    grant wants a password (``events DOMAIN`` asks for it and shows them). Either way only the
    kinds tenants see. The caller's groups are looked up anew for every batch (``refresh``),
    as for any other decision."""

    def __init__(
        self,
        authorizer: Authorizer,
        caller: Caller,
        target: DomainInfo | None,
        names: dict[str, str],
        *,
        recheck_seconds: float,
        account_max_age: float,
    ) -> None:
        self.authorizer = authorizer
        self.caller: Caller | None = caller
        self.domain = target.name if target is not None else None
        self.uuid = target.uuid if target is not None else None
        self.recheck_seconds = recheck_seconds  # a quiet follower is authorized again this often
        self.account_max_age = account_max_age
        self.revoked = False
        # name -> the UUID it stands for now: from the backend when the request came, then
        # from each new event that names the domain as it is (a ``console-detached`` may
        # carry the name its console had when it was opened, so it never updates this)
        self._uuid_of = {name: uuid for uuid, name in names.items()}
        self._allowed: dict[str, bool] = {}  # name -> may_see_events, until the next refresh

    def refresh(self) -> None:
        caller = self.caller
        if caller is not None:
            self.caller = self.authorizer.callers.fresh(caller)
        self._allowed.clear()
        if self.domain is not None and not self.allows(self.domain):
            self.revoked = True

    async def recheck(self) -> str | None:
        """The periodic check of a quiet follower: None if it may go on, else why it ends
        (its one domain is no longer the caller's, or PAM refuses the account now)."""
        self.refresh()
        if self.revoked:
            return f"you may no longer see the events of {self.domain}"
        if self.caller is None or await self.authorizer.account_refused(
            self.caller, self.account_max_age
        ):
            return "your account may no longer use vpsshell"
        return None

    def allows(self, name: str) -> bool:
        """May the caller see the events of ``name`` now (a password given counts only for
        the domain the request named)."""
        allowed = self._allowed.get(name)
        if allowed is None:
            allowed = self.caller is not None and self.authorizer.may_see_events(
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
