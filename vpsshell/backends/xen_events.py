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
  it never shut down (``xl destroy``), ``destroyed``;
* migration (``xl migrate``): the receiving xl builds the domain as ``NAME--incoming`` (paused),
  the sending one suspends it (shutdown reason suspend), renames it ``NAME--migratedaway``,
  lets the new one take the name and run, and destroys the old one. While that goes on, the
  incoming domain is never the domain's current row and gives no ``started``, the suspension
  gives no ``shutdown``, and names with those suffixes are never taken as the domain's name.
  A domain seen migrating whose UUID then has a new domain id (both ends on this host) gives
  ``migrated`` ``out`` then ``migrated`` ``in``; one that goes away after it was seen
  migrating gives ``migrated`` ``out``; one that was seen only as incoming and now runs under
  its own name gives ``migrated`` ``in``. A suspended domain that goes away without having been
  seen migrating is ``stopped`` ``saved`` (``xl save``; a migration to another host whose rename
  fell between two scans looks the same). A migration that fails (the old domain resumes, the
  incoming one is destroyed) gives nothing.
The first scan is the baseline and gives no events.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from vpsshell.backends.base import DomainState
from vpsshell.backends.xen_xl import (
    CRASH_REASONS,
    NIL_UUID,
    RESTART_REASONS,
    SOFT_RESET,
    SUSPEND,
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


# the names xl gives the two ends of a migration (tools/xl/xl_migrate.c)
INCOMING_SUFFIX = "--incoming"
MIGRATED_AWAY_SUFFIX = "--migratedaway"


def migration_base_name(name: str) -> str:
    """A domain's own name without the suffix xl gives it while it migrates."""
    for suffix in (INCOMING_SUFFIX, MIGRATED_AWAY_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def migrating_uuids(rows: Iterable[VerboseRow]) -> set[str]:
    """UUIDs with a domain that xl has named as one end of a migration."""
    return {row.uuid for row in rows if migration_base_name(row.name) != row.name}


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


def _rank(row: VerboseRow) -> tuple[int, int, int]:
    # an incoming migration's domain is the domain only once it is the only one (it may fail)
    incoming = row.name.endswith(INCOMING_SUFFIX)
    return (0 if incoming else 1, 0 if (row.shutdown or row.dying) else 1, row.domid)


@dataclass
class EventTracker:
    restart_grace: float = RESTART_GRACE_SECONDS
    own_action_seconds: float = OWN_ACTION_SECONDS
    current: dict[str, VerboseRow] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    intents: dict[str, tuple[str, float]] = field(default_factory=dict)
    restarting: dict[str, tuple[float, str]] = field(default_factory=dict)
    building: dict[str, float] = field(default_factory=dict)
    migrating: set[str] = field(default_factory=set)  # seen as one end of a migration
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
        self,
        rows: Mapping[str, VerboseRow],
        now: float,
        fallback_names: Mapping[str, str],
        migrating: Collection[str] = (),
    ) -> list[Change]:
        """Compare a new scan (``current_rows``) with the previous one; the events between.
        ``migrating``: the scan's ``migrating_uuids``."""
        for uuid, row in rows.items():
            if usable_name(migration_base_name(row.name)):
                self.names[uuid] = migration_base_name(row.name)
        self.migrating.update(migrating)
        changes: list[Change] = []

        def name(uuid: str) -> str:
            return self.names.get(uuid) or fallback_names.get(uuid) or uuid

        if not self.baseline_taken:
            self.baseline_taken = True
            self.current = dict(rows)
            return changes
        for uuid, row in rows.items():
            old = self.current.get(uuid)
            if old is not None and old.domid != row.domid and uuid in self.migrating:
                changes.append(Change("migrated", uuid, name(uuid), "out"))
                changes.append(Change("migrated", uuid, name(uuid), "in"))
                self.intents.pop(uuid, None)
                seen_reason = None
            elif row.name.endswith(INCOMING_SUFFIX):
                seen_reason = None  # not the domain yet: it is when it runs under its name
            elif old is not None and old.domid == row.domid and old.name.endswith(INCOMING_SUFFIX):
                changes.append(Change("migrated", uuid, name(uuid), "in"))
                seen_reason = None
            elif old is None or old.domid != row.domid:
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
            if row.shutdown and row.reason != seen_reason and row.reason != SUSPEND:
                # (suspended: saved or migrating; the event comes when it is gone or back)
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
            if old.name.endswith(INCOMING_SUFFIX):
                continue  # a migration to this host that failed: it never was the domain
            reason = old.reason if old.shutdown else None
            if uuid in self.migrating:
                changes.append(Change("migrated", uuid, name(uuid), "out"))
                self.intents.pop(uuid, None)
                continue
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
        self.migrating.intersection_update(migrating)  # over, one way or the other
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
