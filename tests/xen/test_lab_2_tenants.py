"""Tenants on a real Xen dom0: vpsshelld with the xen backend, driven through ``vpsshell``.

In the lab's dom0 the helper runs as root with the xen backend; the tenant ``xt-alice`` owns
``web1`` (all actions), ``xt-bob`` may only view ``db1``. Each tenant command is the installed
``vpsshell -c`` run as that user (as sshd would run it); the console runs through ``ssh -tt``
under pexpect, so it has a real terminal. The tests run in order and share the guest: list,
refusals, start, console (prompt, a command, a reboot seen from the console), reset and SysRq,
shutdown --wait, poweroff. Needs ``VPSSHELL_XENLAB=1``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import harness
import pexpect
import pytest
from labkit import HELPER_LOG, HELPER_PID, OWNER, STRANGER, Lab, start_helper

pytestmark = pytest.mark.xenlab

DENIED = "web1: no such domain or permission denied"
BOOT_SECONDS = 120


def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    """harness.wait_until, polling every 0.5 s: each predicate is a command run in dom0."""
    return harness.wait_until(predicate, timeout, message, interval=0.5)


@pytest.fixture(scope="module")
def lab(xenlab: Lab) -> Iterator[Lab]:
    """The helper running in dom0 (in the background, its log in HELPER_LOG)."""
    start_helper(xenlab)
    try:
        yield xenlab
    finally:
        xenlab.run(f"kill $(cat {HELPER_PID}); sleep 1; tail -40 {HELPER_LOG}", check=False)


def status(lab: Lab, domain: str = "web1", user: str = OWNER) -> dict[str, Any]:
    result = lab.vpsshell(user, f"status {domain} --json")
    assert result.code == 0, result
    return dict(json.loads(result.out))


def wait_state(lab: Lab, state: str, timeout: float = BOOT_SECONDS) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        info = status(lab)
        return info if info["state"] == state else None

    return dict(wait_until(reached, timeout, f"web1 {state}"))


def wait_logged(lab: Lab, text: str, timeout: float = BOOT_SECONDS, count: int = 1) -> None:
    wait_until(
        lambda: lab.helper_log().count(text) >= count,
        timeout,
        f"{text!r} x{count} in the helper's log:\n{lab.helper_log()[-3000:]}",
    )


def boots(lab: Lab) -> int:
    """How many times web1's guest finished booting, from the console log tenants read."""
    result = lab.vpsshell(OWNER, "log web1 --lines=10000")
    return result.out.count("XENLAB-DOMU-READY") if result.code == 0 else 0


def test_01_list_shows_each_tenant_only_their_domains(lab: Lab) -> None:
    alice = lab.vpsshell(OWNER, "list --json")
    assert alice.code == 0, alice
    [web1] = json.loads(alice.out)
    assert (web1["name"], web1["state"], web1["host"]) == ("web1", "shutoff", "xenlab")
    assert (web1["vcpus"], web1["memory_mib"], web1["uptime_seconds"]) == (1, 128, None)
    bob = lab.vpsshell(STRANGER, "list --json")
    assert bob.code == 0, bob
    assert [d["name"] for d in json.loads(bob.out)] == ["db1"]


@pytest.mark.parametrize(
    "line",
    [
        "status web1",
        "start web1",
        "shutdown web1",
        "shutdown web1 --wait=5 --force",
        "reboot web1",
        "poweroff web1",
        "reset web1",
        "sysrq web1 s",
        "console web1",
        "console web1 --watch",
        "log web1",
        "events web1",
        "events web1 --follow",
    ],
)
def test_02_a_non_owner_is_refused_every_action(lab: Lab, line: str) -> None:
    result = lab.vpsshell(STRANGER, line)
    assert result.code == 77, result
    assert DENIED in result.err, result


def test_02_a_viewer_may_look_but_not_act_and_strangers_learn_nothing(lab: Lab) -> None:
    assert status(lab, "db1", STRANGER)["state"] == "shutoff"
    refused = lab.vpsshell(STRANGER, "start db1")
    assert refused.code == 77, refused
    missing = lab.vpsshell(OWNER, "status nosuch")
    assert missing.code == 77 and "nosuch: no such domain or permission denied" in missing.err


def follow_events(lab: Lab) -> pexpect.spawn:
    """``ssh host 'events web1 --follow'`` as the owner, over the lab's ssh."""
    return pexpect.spawn(
        lab.ssh[0],
        [*lab.ssh[1:], "-tt", "root@127.0.0.1", lab.tenant_argv(OWNER, "events web1 --follow")],
        encoding="utf-8",
        codec_errors="replace",
        timeout=BOOT_SECONDS,
    )


def test_03_start_runs_the_guest_with_uptime(lab: Lab) -> None:
    follower = follow_events(lab)  # the history, then live events: none missed either way
    try:
        started = lab.vpsshell(OWNER, "start web1")
        assert started.code == 0, started
        follower.expect(r"web1\s+started")
    finally:
        follower.close(force=True)
    info = wait_state(lab, "running")
    assert (info["vcpus"], info["memory_mib"], info["host"]) == (1, 128, "xenlab")
    first = info["uptime_seconds"]
    assert isinstance(first, int) and 0 <= first < BOOT_SECONDS, info
    wait_until(lambda: status(lab)["uptime_seconds"] >= first + 2, 30, "uptime grows")
    wait_logged(lab, "event: xenlab/web1 started")
    again = lab.vpsshell(OWNER, "start web1")
    assert again.code == 1 and "web1 is already running" in again.err, again


def test_04_console_reaches_the_guest_shell_and_follows_a_reboot(lab: Lab) -> None:
    console = pexpect.spawn(
        lab.ssh[0],
        [*lab.ssh[1:], "-tt", "root@127.0.0.1", lab.tenant_argv(OWNER, "console web1")],
        encoding="utf-8",
        codec_errors="replace",
        timeout=BOOT_SECONDS,
    )
    try:
        console.expect("XENLAB-DOMU-READY")  # the boot, live or replayed
        console.send("\r")
        console.expect("/ # ")
        console.send("echo MARK-$((6*7)) $(hostname)\r")
        console.expect("MARK-42 xenlab-domu")
        rebooted = lab.vpsshell(OWNER, "reboot web1")
        assert rebooted.code == 0, rebooted
        console.expect_exact("[vpsshell: web1 is rebooting]")  # the event, as a console notice
        console.expect("XENLAB-DOMU-READY")  # the new boot, on the same console session
        console.send("\r")
        console.expect("/ # ")
        console.send("echo AFTER-$((6*7))\r")
        console.expect("AFTER-42")
        console.sendcontrol("]")
        console.expect(pexpect.EOF, timeout=30)
    finally:
        console.close(force=True)
    wait_logged(lab, "event: xenlab/web1 rebooted (reboot)")
    wait_logged(lab, "console of web1 opened", count=2)  # a new domain id, a new pty
    assert status(lab)["state"] == "running"


def test_05_reset_and_sysrq_keep_it_running(lab: Lab) -> None:
    before = boots(lab)
    reset = lab.vpsshell(OWNER, "reset web1")
    assert reset.code == 0, reset
    wait_logged(lab, "event: xenlab/web1 rebooted (reset)")
    wait_state(lab, "running")
    wait_until(lambda: boots(lab) > before, BOOT_SECONDS, "the guest boots again after reset")
    sysrq = lab.vpsshell(OWNER, "sysrq web1 s")
    assert sysrq.code == 0, sysrq
    assert status(lab)["state"] == "running"
    assert "web1 stopped" not in lab.helper_log()


def test_06_shutdown_waits_until_shut_off(lab: Lab) -> None:
    down = lab.vpsshell(OWNER, "shutdown web1 --wait=180", timeout=400)
    assert down.code == 0, down
    assert "web1: shut off" in down.out, down
    info = status(lab)
    assert (info["state"], info["uptime_seconds"]) == ("shutoff", None)
    wait_logged(lab, "event: xenlab/web1 stopped (shutdown)")
    again = lab.vpsshell(OWNER, "shutdown web1")
    assert again.code == 1 and "web1 is not running (shutoff)" in again.err, again


def test_07_poweroff_is_immediate(lab: Lab) -> None:
    started = lab.vpsshell(OWNER, "start web1")
    assert started.code == 0, started
    wait_state(lab, "running")
    off = lab.vpsshell(OWNER, "poweroff web1")
    assert off.code == 0, off
    assert status(lab)["state"] == "shutoff"
    wait_logged(lab, "event: xenlab/web1 stopped (destroyed)")
    again = lab.vpsshell(OWNER, "poweroff web1")
    assert again.code == 1 and "web1 is already shut off" in again.err, again


def test_08_every_request_is_audited_with_its_decision(lab: Lab) -> None:
    lines = lab.run("cat /var/log/vpsshell/audit.jsonl").out.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    bob = [r for r in records if r.get("user") == STRANGER and r.get("domain") == "web1"]
    assert bob and all(r["decision"] == "deny" for r in bob), bob[:3]
    alice = {
        r.get("action") for r in records if r.get("user") == OWNER and r["decision"] == "allow"
    }
    assert {"start", "reboot", "reset", "sysrq", "shutdown", "poweroff", "console"} <= alice


def test_09_the_owner_sees_every_event_of_the_run(lab: Lab) -> None:
    """What happened to web1 in this run, as its owner reads it with ``events``."""
    result = lab.vpsshell(OWNER, "events web1 --json --lines=1000")
    assert result.code == 0, result
    records = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    seen = [(r["kind"], r.get("detail") or "") for r in records]
    expected = [
        ("started", ""),
        ("console-attached", "write"),
        ("rebooted", "reboot"),
        ("rebooted", "reset"),
        ("stopped", "shutdown"),
        ("started", ""),
        ("stopped", "destroyed"),
    ]
    remaining = iter(seen)
    missing = [step for step in expected if step not in remaining]  # in this order
    assert not missing, f"missing {missing} from {seen}"
    assert {r["domain"] for r in records} == {"web1"}
    assert lab.vpsshell(STRANGER, "events db1").code == 0  # a viewer may read db1's events
