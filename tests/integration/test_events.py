"""``events`` as real tenants against a real helper: own domains only, strangers and unknown
domains alike, JSON lines, ``--follow`` in a real pty seeing what other processes do, a grant
revoked while following, Ctrl-C, and one audit line per request."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pexpect
import pytest
from harness import BIN, DEFAULT_POLICY, Helper, run, start_and_wait, wait_until


def follow(helper: Helper, user: str, line: str) -> pexpect.spawn:
    """``vpsshell -c LINE`` as ``user`` on a pty (as ``ssh -t host LINE`` runs it)."""
    return pexpect.spawn(
        "runuser",
        ["-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", f"VPSSHELL_SOCKET={helper.socket}"]
        + [str(BIN / "vpsshell"), "-c", line],
        timeout=15,
        encoding="utf-8",
    )


def following(helper: Helper, user: str, count: int = 1) -> None:
    """Wait until ``count`` follow requests of ``user`` were answered (the audit line is
    written once the follower is registered, before the reply)."""

    def answered() -> bool:
        lines = [
            line
            for line in helper.audit()
            if line["action"] == "events" and line.get("follow") and line["user"] == user
        ]
        return len(lines) >= count and all(line["result"] == "ok" for line in lines)

    wait_until(answered, 15, f"{user} follows events")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def finish(session: pexpect.spawn) -> int:
    session.expect(pexpect.EOF)
    session.close()
    return int(session.exitstatus)


def test_tenants_see_the_events_of_their_own_domains_only(helper: Helper) -> None:
    start_and_wait(helper, "vpst-alice", "web1")
    start_and_wait(helper, "vpst-carol", "db1")
    alice = run("vpst-alice", helper, "events --json")
    assert alice.code == 0, alice
    events = json_lines(alice.out)
    assert {e["domain"] for e in events} == {"web1"}
    assert [e["kind"] for e in events] == ["started"]
    [started] = events
    assert started["user"] is None and started["detail"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", started["time"])
    assert started["uuid"] == run("vpst-alice", helper, "status web1 --json").json()["uuid"]
    carol = run("vpst-carol", helper, "events")
    assert carol.code == 0, carol
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  db1  started\n", carol.out), carol
    bob = run("vpst-bob", helper, "events")  # bob may see web4's events, which has none
    assert (bob.code, bob.out) == (0, "no events\n")
    # a tenant's own refusals are events for the admin's hooks, never for tenants
    assert run("vpst-bob", helper, "start web1").code == 77
    assert run("vpst-alice", helper, "events --json").json() == started
    assert "denied" not in run("vpst-bob", helper, "events").out


def test_a_stranger_and_an_unknown_domain_get_the_same_answer(helper: Helper) -> None:
    start_and_wait(helper, "vpst-alice", "web1")
    stranger = run("vpst-bob", helper, "events web1")
    unknown = run("vpst-bob", helper, "events web9")
    suspended = run("vpst-mallory", helper, "events db1 --follow")
    assert (stranger.code, stranger.out) == (unknown.code, unknown.out) == (77, "")
    assert stranger.err.replace("web1", "X") == unknown.err.replace("web9", "X")
    assert stranger.err == "vpsshell: web1: no such domain or permission denied\n"
    assert (suspended.code, suspended.out) == (77, "")
    owner = run("vpst-alice", helper, "events web1")
    assert owner.code == 0 and "web1  started" in owner.out, owner


def test_one_audit_line_per_events_request(helper: Helper) -> None:
    before = len(helper.audit())
    lines = ["events", "events web1 --json", "events web1 --lines=5", "events web3"]
    codes = [run("vpst-alice", helper, line).code for line in lines]
    assert codes == [0, 0, 0, 77]
    audited = [line for line in helper.audit()[before:] if line["action"] == "events"]
    assert [(a["domain"], a["decision"], a["result"]) for a in audited] == [
        (None, "allow", "ok"),
        ("web1", "allow", "ok"),
        ("web1", "allow", "ok"),
        ("web3", "deny", "denied"),
    ]
    assert all(a["user"] == "vpst-alice" and a.get("follow") is not True for a in audited)


def test_follow_sees_what_another_process_does_and_ctrl_c_ends_cleanly(helper: Helper) -> None:
    session = follow(helper, "vpst-alice", "events web1 --follow --lines=0")
    following(helper, "vpst-alice")
    start_and_wait(helper, "vpst-alice", "web1")  # another process, another connection
    session.expect(r"\d\d:\d\d:\d\d  web1  started\r\n")
    assert run("vpst-alice", helper, "poweroff web1").code == 0
    session.expect(r"web1  stopped  \(destroyed\)\r\n")
    session.sendcontrol("c")
    code = finish(session)
    assert code == 0
    assert "Traceback" not in (session.before or "")


def test_follow_in_json_stops_showing_a_domain_whose_grant_is_revoked(helper: Helper) -> None:
    everything = follow(helper, "vpst-alice", "events --follow --lines=0 --json")
    only_web1 = follow(helper, "vpst-alice", "events web1 --follow --lines=0")
    following(helper, "vpst-alice", 2)
    start_and_wait(helper, "vpst-alice", "web1")
    everything.expect(r'\{[^\r\n]*"kind": "started"[^\r\n]*\}\r\n')
    assert json.loads(everything.after)["domain"] == "web1"
    only_web1.expect(r"web1  started")
    # revoke alice's grant on web1 (and only that) and reload
    helper.write_policy(
        "10-tenants.policy",
        DEFAULT_POLICY.replace("@operator web1 web2 stubborn", "@operator web2 stubborn"),
    )
    helper.admin("reload")
    # following that one domain ends, as denied
    only_web1.expect("you may no longer see the events of web1")
    assert finish(only_web1) == 77
    # following everything goes on without web1: web1 crashes first, then web2 starts, and
    # only web2's event is shown
    helper.admin("crash", domain="web1")
    start_and_wait(helper, "vpst-alice", "web2")
    everything.expect(r'\{[^\r\n]*"kind": "started"[^\r\n]*\}\r\n')
    shown = json.loads(everything.after)
    assert (shown["domain"], shown["kind"]) == ("web2", "started")
    assert "web1" not in (everything.before or "")
    everything.sendcontrol("c")
    assert finish(everything) == 0


def test_follow_ends_when_nobody_reads_its_output(helper: Helper) -> None:
    """``ssh host 'events --follow'`` without a pty: when the client goes, sshd's end of the
    pipe closes; the follower must notice without waiting for the next event."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        ["runuser", "-u", "vpst-alice", "--", "env", "-i", f"VPSSHELL_SOCKET={helper.socket}"]
        + [str(BIN / "vpsshell"), "-c", "events --follow"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    os.close(write_end)
    following(helper, "vpst-alice")
    os.close(read_end)
    assert process.wait(10) == 0
    assert process.stderr is not None and process.stderr.read() == b""


def test_malformed_events_requests_are_usage_errors(helper: Helper) -> None:
    from vpsshell.client import HelperClient
    from vpsshell.errors import UsageError

    client = HelperClient(str(helper.socket))
    try:
        for args in (
            {"lines": -1},
            {"lines": 10001},
            {"lines": True},
            {"follow": "yes"},
            {"domain": "-rf"},
            {"domain": 7},
            {"user": "vpst-alice"},
        ):
            with pytest.raises(UsageError):
                client.call("events", args)
    finally:
        client.close()
    audited = [line for line in helper.audit() if line["action"] == "events"]
    assert [line["result"] for line in audited] == ["usage"] * 7
