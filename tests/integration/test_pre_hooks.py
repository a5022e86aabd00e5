"""Pre-action hooks in a real helper, with real hook scripts and the real ``vpsshell -c`` as a
tenant: a hook that allows sees the action as JSON and in its environment; one that refuses
stops the action (the domain's state is unchanged) with its first line as the tenant's message
(sanitized, bounded) and its name in the audit line; a hook that times out refuses (and
allows with ``pre_hook_on_timeout = "allow"``), one killed by a signal refuses, one that is not
executable is skipped; hooks run in name order and the first refusal ends the run; a refused
console is never attached; and no hook hears of a request the policy refused."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, Helper, run, start_and_wait, state_of, wait_until
from test_hooks import alive, recorder, seen


def install(helper: Helper, directory: str, name: str, body: str, mode: int = 0o755) -> Path:
    """The hook ``name`` in ``HOOKS_DIR/directory``, owned by root."""
    hooks_dir = helper.hooks_dir / directory
    hooks_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    for path in (helper.hooks_dir, hooks_dir):
        os.chmod(path, 0o755)
    path = hooks_dir / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


def refuser(first_line: str, status: int = 1) -> str:
    """A hook that refuses with ``first_line`` (written raw, escapes and all) and a second
    line that must never reach the tenant."""
    return f"""#!/usr/bin/python3
import sys
sys.stdout.write({first_line!r} + "\\nsecond line, never shown\\n")
sys.exit({status})
"""


def request_audit(helper: Helper, action: str, domain: str) -> dict[str, Any]:
    """The audit line of the last ``action`` request on ``domain``."""
    lines = [r for r in helper.audit() if r.get("action") == action and r.get("domain") == domain]
    assert lines, helper.audit()
    return lines[-1]


def event_kinds(helper: Helper, domain: str) -> list[str]:
    """The kinds of ``domain``'s events, as alice sees them (JSON lines)."""
    result = run("vpst-alice", helper, f"events {domain} --json")
    assert result.code == 0, result
    return [json.loads(line)["kind"] for line in result.out.splitlines()]


@pytest.fixture
def hooked(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper (not started) whose pre-action hooks time out after 2 s."""
    helper = Helper(open_dir / "helper", extra_limits="pre_hook_timeout_seconds = 2")
    yield helper
    helper.stop()


def test_a_hook_that_allows_sees_the_action_and_the_action_happens(
    hooked: Helper, open_dir: Path
) -> None:
    out = open_dir / "seen.jsonl"
    install(hooked, "pre-start.d", "10-record", recorder(out))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    [got] = seen(out)
    uuid = run("vpst-alice", hooked, "status web1 --json").json()["uuid"]
    host = run("vpst-alice", hooked, "status web1 --json").json()["host"]
    assert got["env"] == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "VPSSHELL_EVENT": "pre-start",
        "VPSSHELL_ACTION": "start",
        "VPSSHELL_DOMAIN": "web1",
        "VPSSHELL_USER": "vpst-alice",
        "VPSSHELL_UUID": uuid,
        "VPSSHELL_HOST": host,
    }
    event = json.loads(got["stdin"])
    assert {k: v for k, v in event.items() if k != "time"} == {
        "seq": None,
        "kind": "pre-start",
        "action": "start",
        "domain": "web1",
        "uuid": uuid,
        "detail": "",
        "user": "vpst-alice",
        "host": host,
    }
    audit = request_audit(hooked, "start", "web1")
    assert (audit["result"], audit["pre_hooks"]) == (
        "ok",
        [{"hook": "pre-start.d/10-record", "outcome": "allowed"}],
    )


def test_a_refusal_stops_the_action_and_the_tenant_sees_the_first_line(
    hooked: Helper, open_dir: Path
) -> None:
    message = "\x1b[2J\u202eAccount suspended: invoice 42 is unpaid " + "x" * 1000
    install(hooked, "pre-reboot.d", "50-billing", refuser(message, status=3))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    uptime_before = run("vpst-alice", hooked, "status web1 --json").json()
    refused = run("vpst-alice", hooked, "reboot web1")
    assert refused.code == 77, refused
    [line] = refused.err.splitlines()
    assert "reboot web1 refused: [2JAccount suspended: invoice 42 is unpaid xxx" in line, line
    assert "\x1b" not in line and "\u202e" not in line and "second line" not in line
    assert len(line) < 300, line  # the hook's 1000 characters were cut
    # the action did not happen: no reboot event, the same boot
    assert event_kinds(hooked, "web1") == ["started"]
    after = run("vpst-alice", hooked, "status web1 --json").json()
    assert after["state"] == "running"
    assert after["uptime_seconds"] >= uptime_before["uptime_seconds"]
    audit = request_audit(hooked, "reboot", "web1")
    assert audit["decision"] == "allow" and audit["result"] == "denied"
    [hook] = audit["pre_hooks"]
    assert hook["hook"] == "pre-reboot.d/50-billing"
    assert (hook["outcome"], hook["status"]) == ("refused", 3)
    assert hook["message"].startswith("[2JAccount suspended")


def test_a_hook_that_times_out_refuses_and_is_killed(hooked: Helper, open_dir: Path) -> None:
    child = open_dir / "child.pid"
    install(hooked, "pre-start.d", "10-hang", f"#!/bin/sh\nsleep 600 &\necho $! > {child}\nwait\n")
    hooked.start()
    refused = run("vpst-alice", hooked, "start web1")  # the hook would sleep 600 s
    assert refused.code == 75, refused
    assert "start web1: your provider's check did not answer" in refused.err
    assert state_of(hooked, "vpst-alice", "web1") == "shutoff"
    assert not alive(int(child.read_text()))
    [hook] = request_audit(hooked, "start", "web1")["pre_hooks"]
    assert hook == {"hook": "pre-start.d/10-hang", "outcome": "timed-out"}


def test_with_on_timeout_allow_a_hook_that_times_out_allows(open_dir: Path, tenants: None) -> None:
    helper = Helper(
        open_dir / "helper",
        extra_config='pre_hook_on_timeout = "allow"',
        extra_limits="pre_hook_timeout_seconds = 2",
    )
    install(helper, "pre-start.d", "10-hang", "#!/bin/sh\nexec sleep 600\n")
    helper.start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        [hook] = request_audit(helper, "start", "web1")["pre_hooks"]
        assert hook == {"hook": "pre-start.d/10-hang", "outcome": "timed-out-allowed"}
    finally:
        helper.stop()


def test_a_hook_killed_by_a_signal_refuses(hooked: Helper) -> None:
    install(hooked, "pre-start.d", "10-crash", "#!/bin/sh\nkill -SEGV $$\n")
    hooked.start()
    refused = run("vpst-alice", hooked, "start web1")
    assert refused.code == 75, refused
    assert "start web1: your provider's check failed" in refused.err
    assert state_of(hooked, "vpst-alice", "web1") == "shutoff"
    [hook] = request_audit(hooked, "start", "web1")["pre_hooks"]
    assert hook == {"hook": "pre-start.d/10-crash", "outcome": "crashed", "signal": 11}


def test_a_file_that_is_not_executable_is_skipped_with_a_warning(
    hooked: Helper, open_dir: Path
) -> None:
    out = open_dir / "seen.jsonl"
    install(hooked, "pre-start.d", "10-off", refuser("never runs"), mode=0o644)
    install(hooked, "pre-start.d", "20-record", recorder(out))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    assert len(seen(out)) == 1
    assert [h["hook"] for h in request_audit(hooked, "start", "web1")["pre_hooks"]] == [
        "pre-start.d/20-record"
    ]
    wait_until(
        lambda: "pre-start.d/10-off: not executable; skipped" in hooked.log.read_text(),
        5,
        "the skipped hook logged",
    )


def test_hooks_run_in_name_order_and_the_first_refusal_ends_the_run(
    hooked: Helper, open_dir: Path
) -> None:
    first, last = open_dir / "first.jsonl", open_dir / "last.jsonl"
    install(hooked, "pre-shutdown.d", "30-record", recorder(last))
    install(hooked, "pre-shutdown.d", "20-maintenance", refuser("maintenance until 06:00 UTC"))
    install(hooked, "pre-shutdown.d", "10-record", recorder(first))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    refused = run("vpst-alice", hooked, "shutdown web1")
    assert refused.code == 77, refused
    assert "shutdown web1 refused: maintenance until 06:00 UTC" in refused.err
    assert len(seen(first)) == 1 and not last.exists()
    assert state_of(hooked, "vpst-alice", "web1") == "running"
    outcomes = request_audit(hooked, "shutdown", "web1")["pre_hooks"]
    assert [(h["hook"], h["outcome"]) for h in outcomes] == [
        ("pre-shutdown.d/10-record", "allowed"),
        ("pre-shutdown.d/20-maintenance", "refused"),
    ]


def test_a_refused_console_is_never_attached(hooked: Helper, open_dir: Path) -> None:
    out = open_dir / "seen.jsonl"
    install(hooked, "pre-console.d", "10-record", recorder(out))
    install(hooked, "pre-console.d", "20-closed", refuser("consoles are closed tonight"))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    for line, action in (("console web1", "console"), ("console web1 --watch", "watch")):
        refused = run("vpst-alice", hooked, line)
        assert refused.code == 77, refused
        assert f"{action} web1 refused: consoles are closed tonight" in refused.err
    assert [s["env"]["VPSSHELL_ACTION"] for s in seen(out)] == ["console", "watch"]
    assert {s["env"]["VPSSHELL_EVENT"] for s in seen(out)} == {"pre-console"}
    assert event_kinds(hooked, "web1") == ["started"]  # no console-attached
    assert hooked.admin("sessions") == []


def test_no_hook_hears_of_a_request_the_policy_refused(hooked: Helper, open_dir: Path) -> None:
    out = open_dir / "seen.jsonl"
    install(hooked, "pre-start.d", "10-record", recorder(out))
    hooked.start()
    for user, domain in (("vpst-bob", "web1"), ("vpst-alice", "no-such-domain")):
        refused = run(user, hooked, f"start {domain}")
        assert refused.code == 77, refused
        assert "no such domain or permission denied" in refused.err
    assert not out.exists()
    start_and_wait(hooked, "vpst-alice", "web1")  # the hook is live: an allowed start runs it
    assert [(s["env"]["VPSSHELL_USER"], s["env"]["VPSSHELL_DOMAIN"]) for s in seen(out)] == [
        ("vpst-alice", "web1")
    ]


def test_an_untrusted_hook_directory_refuses_every_action_it_covers(hooked: Helper) -> None:
    install(hooked, "pre-start.d", "10-allow", "#!/bin/sh\nexit 0\n")
    os.chmod(hooked.hooks_dir / "pre-start.d", 0o777)
    hooked.start()
    refused = run("vpst-alice", hooked, "start web1")
    assert refused.code == 75, refused
    assert state_of(hooked, "vpst-alice", "web1") == "shutoff"
    assert request_audit(hooked, "start", "web1")["pre_hooks"] == [
        {"hook": "pre-start.d", "outcome": "untrusted"}
    ]
    # the event hooks in hooks_dir pass the pre-action directories by without a word
    assert "pre-start.d: not a regular file" not in hooked.log.read_text()


def test_one_tenant_waiting_on_hooks_does_not_hold_up_another(
    open_dir: Path, tenants: None
) -> None:
    """Two slots in all, one per user: alice's two requests, both stuck in a hook, hold one
    slot; carol's request takes the other and goes through meanwhile."""
    helper = Helper(
        open_dir / "helper",
        extra_limits="pre_hook_timeout_seconds = 60\npre_hook_runs_at_once = 2\n"
        "pre_hook_runs_per_user = 1",
    )
    release, holding = open_dir / "release", open_dir / "holding"
    install(
        helper,
        "pre-start.d",
        "10-hold-alice",
        f'#!/bin/sh\n[ "$VPSSHELL_USER" = vpst-alice ] || exit 0\necho $$ >> {holding}\n'
        f"while [ ! -e {release} ]; do sleep 0.05; done\n",
    )
    helper.start()
    env = ["env", "-i", f"VPSSHELL_SOCKET={helper.socket}", str(BIN / "vpsshell"), "-c"]
    alice = [
        subprocess.Popen(["runuser", "-u", "vpst-alice", "--", *env, f"start {domain}"])
        for domain in ("web1", "web2")
    ]
    try:
        wait_until(holding.exists, 15, "alice's first start is in its hook")
        start_and_wait(helper, "vpst-carol", "db1")
        [pid] = holding.read_text().split()  # alice's second start still waits for her slot
        assert alive(int(pid)), "carol went through while alice's hook still ran"
        release.touch()
        assert [process.wait(60) for process in alice] == [0, 0]
        assert len(holding.read_text().split()) == 2
    finally:
        release.touch()
        for process in alice:
            process.kill()
            process.wait()
        helper.stop()


def test_minting_a_web_console_link_runs_no_hook(hooked: Helper, open_dir: Path) -> None:
    out = open_dir / "seen.jsonl"
    install(hooked, "pre-console.d", "10-record", recorder(out))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    minted = run("vpst-alice", hooked, "webconsole web1")
    assert minted.code == 0 and "https://" in minted.out, minted
    assert seen(out) == []  # the console, when the link opens it, is where the hook runs
    watched = run("vpst-alice", hooked, "console web1 --watch --no-replay")
    assert watched.code == 0, watched
    assert [s["env"]["VPSSHELL_ACTION"] for s in seen(out)] == ["watch"]
