"""The helper's event record: the history's bound and fairness, what it keeps (per UUID, so a
reused name starts empty), followers that fall behind, listeners that fail, and the backend's
events arriving through ``subscribe``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from vpsshell.backends.base import LifecycleEvent
from vpsshell.backends.sim import SimBackend
from vpsshell.daemon.events import Event, EventRecord


def test_history_is_bounded_and_a_flood_of_one_domain_keeps_the_others() -> None:
    record = EventRecord(history_limit=10, follower_queue=10)
    record.record("started", domain="web2", uuid="u2")
    record.record("started", domain="db1", uuid="u3")
    for index in range(100):
        record.record("console-attached", domain="web1", uuid="u1", user="alice", detail=str(index))
    kept = record.history()
    assert len(kept) == 10
    assert [e.domain for e in kept[:2]] == ["web2", "db1"]  # never pushed out by web1's flood
    assert [e.detail for e in kept[2:]] == [str(i) for i in range(92, 100)]  # web1's newest
    assert [e.seq for e in kept] == sorted(e.seq for e in kept)
    assert [e.domain for e in record.history(["u3", "nosuch"])] == ["db1"]


def test_history_is_kept_per_uuid_whatever_the_name() -> None:
    record = EventRecord(history_limit=10, follower_queue=10)
    record.record("console-attached", domain="a-web", uuid="old", user="alice", detail="write")
    record.record("started", domain="a-web", uuid="new")  # the name given to another domain
    record.record("stopped", domain="renamed", uuid="old")  # the first one, renamed
    assert [(e.kind, e.domain) for e in record.history(["new"])] == [("started", "a-web")]
    assert [e.kind for e in record.history(["old"])] == ["console-attached", "stopped"]
    assert sorted(record.uuids()) == ["new", "old"]


def test_an_event_without_a_uuid_is_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    record = EventRecord(history_limit=10, follower_queue=10)
    heard: list[Event] = []
    record.add_listener(heard.append)
    record.record("console-attached", domain="web1", user="alice")
    assert record.history() == [] and len(heard) == 1
    assert "has no UUID; not kept" in caplog.text


def test_events_for_hooks_only_are_not_kept_but_reach_listeners_and_followers() -> None:
    async def scenario() -> tuple[list[Event], list[Event], list[Event]]:
        record = EventRecord(history_limit=10, follower_queue=10)
        heard: list[Event] = []
        record.add_listener(heard.append)
        follower = record.follow()
        record.record("denied", domain="someone-elses", user="mallory", detail="start: no rule")
        record.record("policy-reloaded", domain=None, detail="ok: 3 rule(s)")
        return record.history(), heard, await follower.next_events()

    kept, heard, followed = asyncio.run(scenario())
    assert kept == []
    assert [e.kind for e in heard] == ["denied", "policy-reloaded"] == [e.kind for e in followed]
    assert heard[0].user == "mallory" and heard[1].domain is None


def test_events_carry_utc_time_and_clipped_detail() -> None:
    event = EventRecord(5, 5).record("stopped", domain="web1", uuid="u", detail="x" * 1000)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event.time)
    assert len(event.detail) == 256
    assert set(event.to_json()) == {"seq", "time", "kind", "domain", "uuid", "detail", "user"}


def test_a_slow_follower_is_dropped_and_holds_up_nobody() -> None:
    async def scenario() -> None:
        record = EventRecord(history_limit=100, follower_queue=3)
        slow, fast = record.follow(), record.follow()
        for index in range(3):
            record.record("started", domain="web1", uuid="u1", detail=str(index))
        assert [e.detail for e in await fast.next_events()] == ["0", "1", "2"]
        record.record("stopped", domain="web1", uuid="u1", detail="3")  # slow's queue is full
        assert slow.closed_reason == "too-slow"
        assert "keep up" in slow.closed_text
        record.record("started", domain="web1", uuid="u1", detail="4")
        # what was queued before the drop is still delivered, then the end
        assert [e.detail for e in await slow.next_events()] == ["0", "1", "2"]
        assert await slow.next_events() == []
        assert [e.detail for e in await fast.next_events()] == ["3", "4"]
        assert fast.closed_reason is None
        assert len(record.history()) == 5

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_close_ends_every_follower_and_wakes_a_waiting_one() -> None:
    async def scenario() -> None:
        record = EventRecord(10, 10)
        follower = record.follow()
        waiting = asyncio.create_task(follower.next_events())
        await asyncio.sleep(0)
        record.close()
        assert await waiting == []
        assert follower.closed_reason == "helper-stopping"
        record.record("started", domain="web1")  # nobody follows any more
        assert await follower.next_events() == []

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    record = EventRecord(10, 10)
    heard: list[str] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook queue exploded")

    record.add_listener(broken)
    record.add_listener(lambda event: heard.append(event.kind))
    record.record("crashed", domain="web1")
    assert heard == ["crashed"]
    assert "event listener failed" in caplog.text


def test_backend_events_are_recorded_and_unknown_kinds_are_not(tmp_path: Path) -> None:
    backend = SimBackend.from_config({"domains": []}, str(tmp_path))
    record = EventRecord(10, 10)
    record.subscribe_backend(backend)
    backend.emit(LifecycleEvent("rebooted", "uuid-1", "web1", "reset"))
    backend.emit(LifecycleEvent("exploded", "uuid-1", "web1"))
    [event] = record.history()
    assert (event.kind, event.domain, event.uuid, event.detail, event.user) == (
        "rebooted",
        "web1",
        "uuid-1",
        "reset",
        None,
    )
