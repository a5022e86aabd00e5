"""Kept events in the helper's SQLite file, with a real helper stopped and started again and
real tenants: ``events`` after a restart, ``seq`` going on, ``--since``, a name re-created with a
new UUID, pruning by count, and a file that cannot be used."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Helper, python_as, run, start_and_wait, wait_until

NEW_WEB1_UUID = "0b7c4a52-7f0e-4d3a-9a41-2f5d8c6e1a90"


def events_of(helper: Helper, user: str, line: str = "events --json") -> list[dict[str, Any]]:
    result = run(user, helper, line)
    assert result.code == 0, result
    return [json.loads(text) for text in result.out.splitlines() if text.strip()]


def kinds_of(events: list[dict[str, Any]]) -> list[str]:
    return [event["kind"] for event in events]


def start_and_stop(helper: Helper, user: str, domain: str) -> None:
    """Two kept events: ``started`` then ``stopped``."""
    start_and_wait(helper, user, domain)
    off = run(user, helper, f"poweroff {domain}")
    assert off.code == 0, off
    wait_until(
        lambda: "stopped" in kinds_of(events_of(helper, user, f"events {domain} --json")),
        10,
        f"{domain} stopped event",
    )


@pytest.fixture
def restartable(open_dir: Path, tenants: None) -> Any:
    helpers: list[Helper] = []

    def make(**keys: Any) -> Helper:
        helper = Helper(open_dir / "helper", **keys)
        helpers.append(helper)
        return helper

    yield make
    for helper in helpers:
        helper.stop()


def test_events_survive_a_restart_and_seq_goes_on(restartable: Any) -> None:
    helper = restartable().start()
    start_and_stop(helper, "vpst-alice", "web1")
    before = events_of(helper, "vpst-alice")
    assert kinds_of(before)[-2:] == ["started", "stopped"]
    helper.stop()
    events_file = helper.root / "state" / "events.sqlite"
    assert stat.S_IMODE(events_file.stat().st_mode) == 0o600
    helper.start()
    after = events_of(helper, "vpst-alice")
    assert after == before  # same events, same seq, same times
    assert events_of(helper, "vpst-carol") == []  # still only one's own domains
    start_and_wait(helper, "vpst-alice", "web1")
    newest = events_of(helper, "vpst-alice")[-1]
    assert newest["kind"] == "started"
    assert newest["seq"] > max(event["seq"] for event in before)


def test_since_selects_by_time_and_is_checked_strictly(restartable: Any) -> None:
    helper = restartable().start()
    start_and_stop(helper, "vpst-alice", "web1")
    everything = events_of(helper, "vpst-alice")
    assert events_of(helper, "vpst-alice", "events --since=-10m --json") == everything
    assert events_of(helper, "vpst-alice", "events web1 --since=2020-01-01T00:00:00Z --json") == [
        event for event in everything if event["domain"] == "web1"
    ]
    assert events_of(helper, "vpst-alice", "events web1 --since=2999-12-05T10:00:00Z --json") == []
    first = everything[0]["time"]
    assert all(
        event["time"] >= first
        for event in events_of(helper, "vpst-alice", f"events --since={first} --json")
    )
    for bad in ("yesterday", "-10", "-10x", "2026-13-01T00:00:00Z", "--1d", "-99999d"):
        refused = run("vpst-alice", helper, f"events --since={bad}")
        assert refused.code == 64, (bad, refused)
        assert "--since" in refused.err
    # a raw client cannot slip a bad value past the shell either
    probe = (
        "import sys\n"
        "from vpsshell.client import HelperClient\n"
        "from vpsshell.errors import UsageError\n"
        "try:\n"
        "    HelperClient(sys.argv[1]).call('events', {'since': 'next tuesday'})\n"
        "    print('accepted')\n"
        "except UsageError as exc:\n"
        "    print('usage:', exc)\n"
    )
    reply = subprocess.run(
        python_as("vpst-alice", probe, str(helper.socket)), capture_output=True, text=True
    )
    assert reply.stdout.startswith("usage: --since"), reply


def test_a_name_re_created_with_a_new_uuid_does_not_inherit_events(restartable: Any) -> None:
    helper = restartable().start()
    start_and_stop(helper, "vpst-alice", "web1")
    start_and_stop(helper, "vpst-alice", "web2")
    web2_before = events_of(helper, "vpst-alice", "events web2 --json")
    helper.stop()
    config = helper.config.read_text()
    helper.config.write_text(
        config.replace('name = "web1"\n', f'name = "web1"\nuuid = "{NEW_WEB1_UUID}"\n', 1)
    )
    helper.start()
    assert events_of(helper, "vpst-alice", "events web1 --json") == []
    everything = events_of(helper, "vpst-alice")
    assert "web1" not in {event["domain"] for event in everything}
    assert everything == web2_before  # the other domain's events are still there


def test_pruning_by_count_keeps_the_newest(restartable: Any) -> None:
    helper = restartable(extra_limits="events_keep = 3").start()
    start_and_stop(helper, "vpst-alice", "web1")
    start_and_stop(helper, "vpst-alice", "web2")
    before = events_of(helper, "vpst-alice")
    assert len(before) >= 4
    helper.stop()
    helper.start()
    assert events_of(helper, "vpst-alice") == before[-3:]


def test_an_unusable_events_file_does_not_stop_the_helper(restartable: Any) -> None:
    helper = restartable()
    (helper.root / "state").mkdir(mode=0o700)
    (helper.root / "state" / "events.sqlite").mkdir()  # cannot be opened as a file
    helper.start()
    start_and_stop(helper, "vpst-alice", "web1")
    assert kinds_of(events_of(helper, "vpst-alice"))[-2:] == ["started", "stopped"]
    complaints = [line for line in helper.log.read_text().splitlines() if "events file" in line]
    assert len(complaints) == 1, complaints
    assert "kept in memory only" in complaints[0]


def test_events_lists_what_the_file_keeps_beyond_the_memory_window(restartable: Any) -> None:
    helper = restartable(extra_limits="events_history = 2").start()
    start_and_stop(helper, "vpst-alice", "web1")
    start_and_stop(helper, "vpst-alice", "web2")
    start_and_stop(helper, "vpst-carol", "db1")  # the team's: never shown to alice
    shown = events_of(helper, "vpst-alice")
    assert [(e["domain"], e["kind"]) for e in shown] == [
        ("web1", "started"),
        ("web1", "stopped"),
        ("web2", "started"),
        ("web2", "stopped"),
    ]  # memory holds 2 events of all domains; the file holds these
    assert events_of(helper, "vpst-alice", "events --json --lines=3") == shown[-3:]
    assert events_of(helper, "vpst-alice", "events web1 --json") == shown[:2]
    seqs = [e["seq"] for e in shown]
    assert seqs == sorted(seqs)
