"""The libvirt backend's record of each host's domains, and the choice among a domain's copies.

A live migration leaves one UUID on two hosts for a while (running on the source, paused on
the destination), and a migration without ``--undefinesource`` leaves a shut-off copy behind
for good: these tests pin which copy a tenant's command acts on, and that an unclear case is
refused rather than guessed.
"""

from __future__ import annotations

import pytest

from vpsshell.backends.base import DomainState
from vpsshell.backends.libvirt_inventory import (
    AmbiguousCopies,
    DomainRecord,
    Inventory,
    choose_copy,
)

UUID = "6a5f1c3e-0000-4000-8000-000000000001"
OTHER = "6a5f1c3e-0000-4000-8000-000000000002"


def record(name: str, state: DomainState, uuid: str = UUID) -> DomainRecord:
    return DomainRecord(name, uuid, 1, state, 1, 262144)


def test_a_running_copy_is_the_domain_during_and_after_a_migration() -> None:
    during = [
        ("node1", record("web1", DomainState.RUNNING)),
        ("node2", record("web1", DomainState.PAUSED)),
    ]
    assert choose_copy(during, None) == during[0]
    after = [
        ("node1", record("web1", DomainState.SHUTOFF)),
        ("node2", record("web1", DomainState.RUNNING)),
    ]
    assert choose_copy(after, "node1") == after[1]  # never the source's left-over definition


def test_all_shut_off_copies_go_to_the_host_it_last_ran_on_or_are_refused() -> None:
    copies = [
        ("node1", record("web1", DomainState.SHUTOFF)),
        ("node2", record("web1", DomainState.SHUTOFF)),
    ]
    assert choose_copy(copies, "node2") == copies[1]
    with pytest.raises(AmbiguousCopies) as caught:
        choose_copy(copies, None)  # a start could boot the stale copy: refuse, never guess
    assert caught.value.hosts == ["node1", "node2"]


def test_two_running_copies_are_refused() -> None:
    copies = [
        ("node1", record("web1", DomainState.RUNNING)),
        ("node2", record("web1", DomainState.RUNNING)),
    ]
    with pytest.raises(AmbiguousCopies):
        choose_copy(copies, None)
    assert choose_copy(copies, "node2") == copies[1]


def test_indexes_follow_renames_removals_and_full_inventories() -> None:
    seen = Inventory()
    seen.put("node1", record("web1", DomainState.RUNNING))
    seen.put("node2", record("db1", DomainState.SHUTOFF, OTHER))
    assert [host for host, _ in seen.named("web1")] == ["node1"]
    seen.put("node1", record("web9", DomainState.RUNNING))  # renamed
    assert seen.named("web1") == [] and [h for h, _ in seen.named("web9")] == ["node1"]
    seen.put("node2", record("web9", DomainState.PAUSED))  # migrating to node2
    assert [host for host, _ in seen.copies(UUID)] == ["node1", "node2"]
    before = seen.replace("node1", [])  # node1's new inventory: it is gone from there
    assert set(before) == {UUID}
    assert [host for host, _ in seen.copies(UUID)] == ["node2"]
    assert seen.count("node1") == 0 and seen.count("node2") == 2
    assert seen.complete == {"node1"}
    seen.remove("node2", OTHER)
    assert seen.named("db1") == [] and seen.copies(OTHER) == []
