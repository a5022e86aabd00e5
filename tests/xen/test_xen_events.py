"""Lifecycle events from successive ``xl list -v`` scans (xen_events), without Xen.

The reboot sequence is the one captured in the lab (tests/fixtures/xen/list-v-reboot.txt); the
other scans are built from rows of the same shape. Time is passed in, so no test sleeps.
"""

from __future__ import annotations

from pathlib import Path

from vpsshell.backends.base import DomainState
from vpsshell.backends.xen_events import (
    RESTART_GRACE_SECONDS,
    Change,
    EventTracker,
    current_rows,
    migrating_uuids,
)
from vpsshell.backends.xen_xl import (
    CRASH,
    POWEROFF,
    REBOOT,
    SUSPEND,
    VerboseRow,
    parse_list_verbose,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xen"
WEB1 = "f9895986-a9f0-43a7-bc97-32845534e69c"
DB1 = "d0d0d0d0-1111-4222-8333-444455556666"
NAMES = {WEB1: "web1", DB1: "db1"}


def web1(domid: int, flags: str = "-b----", reason: int | None = None) -> dict[str, VerboseRow]:
    return {WEB1: VerboseRow("web1", domid, 128, 1, flags, WEB1, reason)}


def scan(tracker: EventTracker, rows: dict[str, VerboseRow], now: float) -> list[tuple[str, ...]]:
    return [(c.kind, c.name, c.detail) for c in tracker.observe(rows, now, NAMES)]


def test_the_first_scan_is_a_baseline_then_start_and_destroy() -> None:
    t = EventTracker()
    assert scan(t, web1(3), 0) == []  # already running when the helper started
    assert scan(t, {}, 1) == [("stopped", "web1", "destroyed")]  # gone without shutting down
    assert scan(t, {}, 2) == []
    assert scan(t, web1(4, "--p---"), 3) == [("started", "web1", "")]
    assert t.state(WEB1, web1(4, "--p---")[WEB1], 4) is DomainState.STARTING  # being built
    assert scan(t, web1(4), 5) == []
    assert t.state(WEB1, web1(4)[WEB1], 6) is DomainState.RUNNING


def test_a_reboot_captured_in_the_lab_is_one_rebooted_event() -> None:
    blocks = (FIXTURES / "list-v-reboot.txt").read_text().split("===\n")
    t = EventTracker()
    changes: list[Change] = []
    for now, block in enumerate(blocks):
        rows, _ = parse_list_verbose(block)
        if now == 1:
            t.intend(WEB1, "reboot", now)  # the helper asked for it
        changes += t.observe(current_rows(rows), float(now), NAMES)
        if not [r for r in rows if r.uuid == WEB1]:
            assert t.state(WEB1, None, now) is DomainState.STARTING  # between two domains
    assert [(c.kind, c.name, c.detail) for c in changes] == [("rebooted", "web1", "reboot")]
    assert t.intent(WEB1, len(blocks)) is None


def test_a_reboot_the_guest_asked_for_is_named_guest() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    assert scan(t, web1(3, "---sr-", REBOOT), 1) == []
    assert scan(t, web1(4), 2) == [("rebooted", "web1", "guest")]


def test_a_reboot_whose_teardown_was_missed_still_is_a_reboot() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.intend(WEB1, "reboot", 0.5)
    assert scan(t, {}, 1) == []  # gone, no shutdown seen, but the helper asked for a reboot
    assert scan(t, web1(4), 2) == [("rebooted", "web1", "reboot")]
    t2 = EventTracker()
    scan(t2, web1(3), 0)
    assert scan(t2, web1(9), 1) == [("rebooted", "web1", "guest")]  # new id between scans


def test_a_reboot_that_never_comes_back_stops_after_the_grace() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    scan(t, web1(3, "---sr-", REBOOT), 1)
    assert scan(t, {}, 2) == []
    assert t.next_deadline() == 1 + RESTART_GRACE_SECONDS
    assert scan(t, {}, 1 + RESTART_GRACE_SECONDS) == [("stopped", "web1", "reboot")]
    assert t.state(WEB1, None, 100) is None


def test_a_guest_poweroff_is_shutdown_then_stopped() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    assert scan(t, web1(3, "---s--", POWEROFF), 1) == [("shutdown", "web1", "poweroff")]
    assert scan(t, web1(3, "---s-d", POWEROFF), 2) == []
    assert scan(t, {}, 3) == [("stopped", "web1", "shutdown")]


def test_a_requested_shutdown_shows_and_names_its_stop_even_if_missed() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.intend(WEB1, "shutdown", 1)
    assert t.state(WEB1, web1(3)[WEB1], 2) is DomainState.SHUTTING_DOWN
    assert scan(t, {}, 3) == [("stopped", "web1", "shutdown")]
    assert t.intent(WEB1, 4) is None


def test_a_crash_is_crashed_then_stopped_crashed() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    assert scan(t, web1(3, "---sc-", CRASH), 1) == [("crashed", "web1", "crash")]
    assert t.state(WEB1, web1(3, "---sc-", CRASH)[WEB1], 1) is DomainState.CRASHED
    assert scan(t, {}, 2) == [("stopped", "web1", "crashed")]


def test_a_reset_by_destroy_and_create_is_one_rebooted_event() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.expect_restart(WEB1, "reset", 1)
    assert scan(t, {}, 2) == []
    assert t.state(WEB1, None, 2) is DomainState.STARTING
    assert scan(t, web1(4, "--p---"), 3) == [("rebooted", "web1", "reset")]


def test_a_failed_reset_is_stopped() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.expect_restart(WEB1, "reset", 1)
    assert scan(t, {}, 2) == []
    assert t.cancel_restart(WEB1, "destroyed") == Change("stopped", WEB1, "web1", "destroyed")
    assert t.state(WEB1, None, 3) is None
    assert scan(t, {}, 4) == []


def test_a_sysrq_reboot_is_named_after_the_sysrq() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.intend(WEB1, "sysrq", 1)
    scan(t, web1(3, "---sr-", REBOOT), 2)
    assert scan(t, web1(4), 3) == [("rebooted", "web1", "sysrq")]


def test_own_actions_are_forgotten_after_a_while() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    t.intend(WEB1, "reboot", 0)
    scan(t, web1(3, "---sr-", REBOOT), 1000)
    assert scan(t, web1(4), 1001) == [("rebooted", "web1", "guest")]


def test_names_come_from_the_last_usable_name_while_torn_down() -> None:
    t = EventTracker()
    scan(t, web1(3), 0)
    null = {WEB1: VerboseRow("(null)", 3, 128, 1, "---s--", WEB1, POWEROFF)}
    assert t.observe(null, 1, {}) == [Change("shutdown", WEB1, "web1", "poweroff")]


def test_current_rows_prefers_the_new_domain_during_a_reboot() -> None:
    old = VerboseRow("(null)", 3, 128, 1, "---sr-", WEB1, REBOOT)
    new = VerboseRow("web1", 4, 0, 0, "--p---", WEB1, None)
    dom0 = VerboseRow(
        "Domain-0", 0, 768, 2, "r-----", "0" * 8 + "-0000-0000-0000-" + "0" * 12, None
    )
    assert current_rows([new, old, dom0]) == {WEB1: new}
    assert current_rows([old]) == {WEB1: old}


MIG2 = "1be61d33-8220-4086-8bc0-ed7c31283734"


def migration_scans() -> list[list[VerboseRow]]:
    """``xl migrate mig2 localhost`` captured in the lab (a PVH guest), one block per change."""
    blocks = (FIXTURES / "list-v-migrate.txt").read_text().split("===\n")
    return [parse_list_verbose(block)[0] for block in blocks]


def observe_all(t: EventTracker, scans: list[list[VerboseRow]]) -> list[tuple[str, ...]]:
    changes: list[tuple[str, ...]] = []
    for now, rows in enumerate(scans):
        found = t.observe(current_rows(rows), float(now), {}, migrating_uuids(rows))
        changes += [(c.kind, c.name, c.detail) for c in found]
    return changes


def test_a_migration_on_this_host_is_migrated_out_then_in() -> None:
    scans = migration_scans()
    t = EventTracker()
    assert observe_all(t, scans) == [("migrated", "mig2", "out"), ("migrated", "mig2", "in")]
    assert t.names[MIG2] == "mig2" and not t.migrating
    # the incoming domain is never the domain while the old one is there
    assert current_rows(scans[1])[MIG2].domid == 4 and current_rows(scans[2])[MIG2].domid == 4
    # fewer scans (watches coalesce): the same two events
    for kept in ([0, 1, 5], [0, 2, 5], [0, 1, 3, 5]):
        events = observe_all(EventTracker(), [scans[i] for i in kept])
        assert events == [("migrated", "mig2", "out"), ("migrated", "mig2", "in")], kept


def test_a_failed_migration_gives_nothing() -> None:
    scans = migration_scans()
    resumed = [row for row in scans[0]]  # the old domain runs again, the incoming one is gone
    assert observe_all(EventTracker(), [*scans[:3], resumed, resumed]) == []


def row(name: str, domid: int, flags: str, reason: int | None = None) -> VerboseRow:
    return VerboseRow(name, domid, 128, 1, flags, MIG2, reason)


def test_a_migration_to_another_host_is_migrated_out_if_seen_renamed() -> None:
    running, suspended = [row("mig2", 4, "-b----")], [row("mig2", 4, "---ss-", SUSPEND)]
    renamed = [row("mig2--migratedaway", 4, "--pss-", SUSPEND)]
    assert observe_all(EventTracker(), [running, suspended, renamed, []]) == [
        ("migrated", "mig2", "out")
    ]
    # a suspended domain that goes away unseen renamed: xl save (or a rename between scans)
    assert observe_all(EventTracker(), [running, suspended, []]) == [("stopped", "mig2", "saved")]


def test_a_migration_from_another_host_is_migrated_in_once_it_has_its_name() -> None:
    incoming = [row("mig2--incoming", 9, "--p---")]
    t = EventTracker()
    assert observe_all(t, [[], incoming, incoming]) == []
    assert t.names[MIG2] == "mig2"  # never mig2--incoming
    assert observe_all(t, [[row("mig2", 9, "r-----")]]) == [("migrated", "mig2", "in")]
    # one that fails on the way in was never here
    assert observe_all(EventTracker(), [[], incoming, []]) == []
