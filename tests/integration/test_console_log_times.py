"""``log --timestamps`` and ``log --since`` as real tenants on the sim backend: when each line
of console output arrived, who attached and detached, selection by time, ``--json``, bad
times, and a log written before times were kept."""

from __future__ import annotations

import math
import time
from typing import Any

from harness import Helper, console_as, run, start_and_wait, state_of, wait_until
from test_console import PROMPT, login

from vpsshell.since import format_utc


def timed_log(helper: Helper, *options: str) -> list[dict[str, Any]]:
    result = run("vpst-alice", helper, " ".join(["log web1 --timestamps --json", *options]))
    assert result.code == 0, result
    entries: list[dict[str, Any]] = result.json()["entries"]
    return entries


def logged_at(helper: Helper, text: str) -> str | None:
    """The time of the output line ``text`` in web1's log, None while it is not there."""
    times = [e["time"] for e in timed_log(helper, "--lines=10000") if e.get("text") == text]
    return times[-1] if times else None


def test_lines_carry_their_times_since_selects_and_attaches_are_marked(helper: Helper) -> None:
    start_and_wait(helper, "vpst-alice", "web1")
    session = console_as(helper, "vpst-alice", "web1")
    login(session)
    session.send("echo first-output\r")
    session.expect(PROMPT)
    wait_until(lambda: logged_at(helper, "first-output") is not None, 10, "first line logged")
    # a time after the first output was logged, to the second; the second output comes later
    between = math.floor(time.time()) + 1
    wait_until(lambda: time.time() >= between, 5, "the clock past the first output's second")
    session.send("echo second-output\r")
    session.expect(PROMPT)
    wait_until(lambda: logged_at(helper, "second-output") is not None, 10, "second line logged")
    session.send("\x1d")
    session.expect("detached")
    session.wait()

    first, second = logged_at(helper, "first-output"), logged_at(helper, "second-output")
    assert first is not None and second is not None
    assert first < format_utc(between) <= second
    markers = [(e["event"], e["user"], e["mode"]) for e in timed_log(helper) if "event" in e]
    assert markers[-2:] == [
        ("attached", "vpst-alice", "write"),
        ("detached", "vpst-alice", "write"),
    ]

    since = run("vpst-alice", helper, f"log web1 --since={format_utc(between)}")
    assert since.code == 0, since
    assert "second-output" in since.out.splitlines()
    assert "first-output" not in since.out.splitlines()
    shown = run("vpst-alice", helper, f"log web1 --timestamps --since={format_utc(between)}")
    assert f"{second} second-output" in shown.out.splitlines()
    # the last prompt was begun before the detach: the marker comes before its line
    assert shown.out.splitlines()[-2].endswith(" -- vpst-alice detached (write) --")
    # without the new options, the log is what it always was: the lines alone
    plain = run("vpst-alice", helper, "log web1 --lines=10000 --json").json()
    assert "entries" not in plain
    texts = [e["text"] for e in timed_log(helper, "--lines=10000") if "text" in e]
    assert plain["lines"] == texts


def test_a_bad_since_is_a_usage_error(helper: Helper) -> None:
    assert run("vpst-alice", helper, "log web1 --since=-10m").code == 0
    for value in ("yesterday", "2026-13-01", "-10y", ""):
        result = run("vpst-alice", helper, f"log web1 --since={value}")
        assert result.code == 64, (value, result)


def test_a_log_from_before_times_reads_as_before(helper: Helper) -> None:
    status = run("vpst-alice", helper, "status web1 --json")
    assert status.code == 0, status
    log_dir = helper.root / "console"
    log_dir.mkdir(mode=0o750, exist_ok=True)
    (log_dir / f"{status.json()['uuid']}.log").write_bytes(b"logged long ago\r\n")
    assert run("vpst-alice", helper, "log web1").out == "logged long ago\n"
    assert state_of(helper, "vpst-alice", "web1") == "shutoff"
    assert timed_log(helper) == [{"time": None, "text": "logged long ago"}]
    assert run("vpst-alice", helper, "log web1 --timestamps").out == (f"{'-':20} logged long ago\n")
    assert run("vpst-alice", helper, "log web1 --since=-1d --json").json()["lines"] == []
