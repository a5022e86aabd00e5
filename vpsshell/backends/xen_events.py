"""Lifecycle events of Xen domains, worked out from successive ``xl list -v`` scans.

XenStore's ``@introduceDomain`` and ``@releaseDomain`` watches only say that *some* domain
appeared, shut down or went away; the backend then rescans and this tracker compares the scan
with the previous one, per UUID (never per name or id: a dying domain is listed as ``(null)``,
and ``xl reboot`` builds a new domain with a new id and the same UUID). Pure and clock-free:
the caller passes ``now`` (monotonic seconds), so every rule is tested from recorded scans.

The rules (libxl's shutdown reason codes, ``xen_xl.REASON_NAMES``):
* a UUID that appears is ``started``; one that comes back with a new domain id after a reboot
  or soft reset (or after the backend's own reset) is ``rebooted``, with the detail ``reboot``,
  ``reset`` or ``sysrq`` when the helper asked for it recently, else ``guest``/``soft_reset``;
* a domain seen shut down with reason poweroff/suspend gives ``shutdown``, crash/watchdog gives
  ``crashed``; reboot and soft reset give nothing until the domain is back (or, after
  ``restart_grace`` seconds without it, ``stopped`` with the detail ``reboot``);
* a domain that goes away gives ``stopped`` with ``shutdown``, ``saved``, ``crashed`` or, when
  it never shut down (``xl destroy``), ``destroyed``.
The first scan is the baseline and gives no events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from vpsshell.backends.base import DomainState
from vpsshell.backends.xen_xl import (
    CRASH_REASONS,
    NIL_UUID,
    RESTART_REASONS,
    SOFT_RESET,
    VerboseRow,
    domain_state,
    gone_event,
    shutdown_event,
    usable_name,
)

RESTART_GRACE_SECONDS = 30.0  # from a reboot's teardown to the new domain in XenStore
OWN_ACTION_SECONDS = 120.0  # an event this soon after our reboot/reset/sysrq is named after it
SHUTDOWN_INTENT_SECONDS = 600.0  # a requested shutdown shows as shutting-down this long at most
BUILD_SECONDS = 120.0  # a new domain that is still paused this long is just paused


@dataclass(frozen=True)
class Change:
    kind: str
    uuid: str
    name: str
    detail: str = ""


def current_rows(rows: Iterable[VerboseRow]) -> dict[str, VerboseRow]:
    """One row per UUID: the live domain of that UUID. During a reboot the old, shut down
    domain and the new one can both be listed; the new one is the one that is not shut down
    (then the higher id). Domain-0 and the nil UUID are left out."""
    chosen: dict[str, VerboseRow] = {}
    for row in rows:
        if row.domid == 0 or row.uuid == NIL_UUID:
            continue
        best = chosen.get(row.uuid)
        if best is None or _rank(row) > _rank(best):
            chosen[row.uuid] = row
    return chosen


def _rank(row: VerboseRow) -> tuple[int, int]:
    return (0 if (row.shutdown or row.dying) else 1, row.domid)


@dataclass
class EventTracker:
    restart_grace: float = RESTART_GRACE_SECONDS
    own_action_seconds: float = OWN_ACTION_SECONDS
    current: dict[str, VerboseRow] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    intents: dict[str, tuple[str, float]] = field(default_factory=dict)
    restarting: dict[str, tuple[float, str]] = field(default_factory=dict)
    building: dict[str, float] = field(default_factory=dict)
    baseline_taken: bool = False

    # -- what the helper did ----------------------------------------------------------------

    def intend(self, uuid: str, verb: str, now: float) -> None:
        """The helper is about to ask for ``verb`` (start shutdown reboot poweroff sysrq)."""
        self.intents[uuid] = (verb, now)

    def forget_intent(self, uuid: str) -> None:
        self.intents.pop(uuid, None)

    def intent(self, uuid: str, now: float) -> str | None:
        verb, at = self.intents.get(uuid, ("", 0.0))
        limit = SHUTDOWN_INTENT_SECONDS if verb == "shutdown" else self.own_action_seconds
        if verb and now - at <= limit:
            return verb
        self.intents.pop(uuid, None)
        return None

    def expect_restart(self, uuid: str, detail: str, now: float) -> None:
        """The helper is about to destroy and re-create the domain (a reset)."""
        self.restarting[uuid] = (now + self.restart_grace, detail)

    def cancel_restart(self, uuid: str, detail: str) -> Change | None:
        """The re-creation failed: the domain is gone for good."""
        if self.restarting.pop(uuid, None) is None:
            return None
        self.current.pop(uuid, None)
        return Change("stopped", uuid, self.names.get(uuid, uuid), detail)

    # -- what Xen shows ---------------------------------------------------------------------

    def observe(
        self, rows: Mapping[str, VerboseRow], now: float, fallback_names: Mapping[str, str]
    ) -> list[Change]:
        """Compare a new scan (``current_rows``) with the previous one; the events between."""
        for uuid, row in rows.items():
            if usable_name(row.name):
                self.names[uuid] = row.name
        changes: list[Change] = []

        def name(uuid: str) -> str:
            return self.names.get(uuid) or fallback_names.get(uuid) or uuid

        if not self.baseline_taken:
            self.baseline_taken = True
            self.current = dict(rows)
            return changes
        for uuid, row in rows.items():
            old = self.current.get(uuid)
            if old is None or old.domid != row.domid:
                restart = self.restarting.pop(uuid, None)
                if restart is not None:
                    changes.append(Change("rebooted", uuid, name(uuid), restart[1]))
                elif old is not None:  # went and came back between two scans
                    detail = self._restart_detail(uuid, old.reason, now)
                    changes.append(Change("rebooted", uuid, name(uuid), detail))
                else:
                    changes.append(Change("started", uuid, name(uuid)))
                self.intents.pop(uuid, None)
                if row.paused:
                    self.building[uuid] = now
                seen_reason = None
            else:
                seen_reason = old.reason if old.shutdown else None
            if not row.paused:
                self.building.pop(uuid, None)
            if row.shutdown and row.reason != seen_reason:
                if row.reason in RESTART_REASONS:
                    detail = self._restart_detail(uuid, row.reason, now)
                    self.restarting[uuid] = (now + self.restart_grace, detail)
                else:
                    event = shutdown_event(row.reason)
                    if event is not None:
                        changes.append(Change(event[0], uuid, name(uuid), event[1]))
        for uuid, old in self.current.items():
            if uuid in rows:
                continue
            self.building.pop(uuid, None)
            if uuid in self.restarting:
                continue
            reason = old.reason if old.shutdown else None
            intent = self.intent(uuid, now)
            if reason in RESTART_REASONS or (reason is None and intent == "reboot"):
                detail = self._restart_detail(uuid, reason, now)
                self.restarting[uuid] = (now + self.restart_grace, detail)
                continue
            kind, detail = gone_event(reason)
            if reason is None and intent == "shutdown":
                detail = "shutdown"  # its shut-down state came and went between two scans
            changes.append(Change(kind, uuid, name(uuid), detail))
            self.intents.pop(uuid, None)
        for uuid, (deadline, detail) in list(self.restarting.items()):
            if uuid not in rows and now >= deadline:
                del self.restarting[uuid]
                self.current.pop(uuid, None)
                changes.append(
                    Change("stopped", uuid, name(uuid), "reset" if detail == "reset" else "reboot")
                )
        self.current = dict(rows)
        return changes

    def _restart_detail(self, uuid: str, reason: int | None, now: float) -> str:
        intent = self.intent(uuid, now)
        if intent in ("reboot", "reset", "sysrq"):
            return intent
        if reason == SOFT_RESET:
            return "soft_reset"
        if reason in CRASH_REASONS:
            return "crash"
        return "guest"

    def next_deadline(self) -> float | None:
        """When a pending restart gives up: the backend rescans then."""
        return min((deadline for deadline, _ in self.restarting.values()), default=None)

    # -- what tenants see -------------------------------------------------------------------

    def state(self, uuid: str, row: VerboseRow | None, now: float) -> DomainState | None:
        """The state shown for a UUID; None if it has no domain and is not coming back."""
        if row is None:
            return DomainState.STARTING if uuid in self.restarting else None
        state = domain_state(row)
        since = self.building.get(uuid)
        if state is DomainState.PAUSED and since is not None and now - since < BUILD_SECONDS:
            return DomainState.STARTING
        if state in (DomainState.RUNNING, DomainState.PAUSED) and (
            self.intent(uuid, now) == "shutdown"
        ):
            return DomainState.SHUTTING_DOWN
        return state
