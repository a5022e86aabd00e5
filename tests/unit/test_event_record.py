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


def stored_record(state_dir: Path, history_limit: int = 10, keep: int = 100) -> EventRecord:
    from vpsshell.daemon.event_store import EventStore

    return EventRecord(history_limit, 10, EventStore(str(state_dir), keep, 90))


def test_kept_events_are_loaded_again_and_seq_goes_on(tmp_path: Path) -> None:
    first = stored_record(tmp_path)
    first.record("started", domain="web1", uuid="u1")
    first.record("denied", domain="web1", detail="start: not allowed")  # never stored
    first.record("console-attached", domain="web1", uuid="u1", user="alice", detail="write")
    first.record("started", domain="db1", uuid="u2")
    before = first.history()
    first.close()
    assert (tmp_path / "events.sqlite").stat().st_mode & 0o777 == 0o600
    again = stored_record(tmp_path, history_limit=2)  # loads the newest that fit
    assert again.history() == before[-2:]
    assert again.record("stopped", domain="db1", uuid="u2").seq > before[-1].seq
    again.close()


def test_the_file_is_pruned_by_count_and_age(tmp_path: Path) -> None:
    import sqlite3

    record = stored_record(tmp_path, keep=5)
    for index in range(12):
        record.record("started", domain="web1", uuid="u1", detail=str(index))
    record.close()
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        db.execute("UPDATE events SET time = '2000-01-01T00:00:00Z' WHERE detail = '11'")
    again = stored_record(tmp_path, keep=5)  # pruned at start: the newest 5, then by age
    assert [e.detail for e in again.history()] == ["7", "8", "9", "10"]
    again.close()


def test_a_file_that_cannot_be_used_is_logged_once_and_memory_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "events.sqlite").mkdir()
    record = stored_record(tmp_path)
    for index in range(3):
        record.record("started", domain="web1", uuid="u1", detail=str(index))
    assert [e.detail for e in record.history()] == ["0", "1", "2"]
    assert len([r for r in caplog.records if "events file" in r.getMessage()]) == 1


def test_a_write_that_fails_is_logged_once_until_it_works_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    record = stored_record(tmp_path)
    record.record("started", domain="web1", uuid="u1")
    with sqlite3.connect(tmp_path / "events.sqlite") as db:
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON events BEGIN SELECT RAISE(FAIL, 'full'); END"
        )
    for _ in range(3):
        record.record("stopped", domain="web1", uuid="u1")  # never raises
    assert [e.kind for e in record.history()] == ["started", "stopped", "stopped", "stopped"]
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
    record.close()


def test_history_since_a_time() -> None:
    record = EventRecord(history_limit=10, follower_queue=10)
    record.record("started", domain="web1", uuid="u1")
    assert [e.kind for e in record.history(["u1"], since="2000-01-01T00:00:00Z")] == ["started"]
    assert record.history(["u1"], since="2999-01-01T00:00:00Z") == []


def test_since_accepts_iso_times_and_relative_ones_only() -> None:
    from vpsshell.errors import UsageError
    from vpsshell.since import parse_since

    now = 1796464800.0  # 2026-12-05T10:00:00Z
    assert parse_since("-10m", now) == "2026-12-05T09:50:00Z"
    assert parse_since("-2h", now) == "2026-12-05T08:00:00Z"
    assert parse_since("-1d", now) == "2026-12-04T10:00:00Z"
    assert parse_since("2026-12-05T10:00:00Z", now) == "2026-12-05T10:00:00Z"
    assert parse_since("2026-12-05T11:00:00+01:00", now) == "2026-12-05T10:00:00Z"
    assert parse_since("2026-12-05", now) == "2026-12-05T00:00:00Z"
    for bad in (
        "",
        "-10",
        "10m",
        "-1w",
        "-10000d",
        "now",
        "2026-13-01",
        "2026-12-05 10:00",
        "x" * 99,
    ):
        with pytest.raises(UsageError):
            parse_since(bad, now)
