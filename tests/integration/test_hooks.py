"""Admin hooks in a real helper: a root-owned hook gets each event as JSON on stdin and in its
environment (lifecycle events and denials alike), a hung hook is killed at the timeout while
the helper keeps answering, a shutdown kills a running hook, and a group-writable hook is
skipped and said so once."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Helper, run, start_and_wait, wait_until


def install_hook(helper: Helper, name: str, body: str, mode: int = 0o755) -> Path:
    helper.hooks_dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(helper.hooks_dir, 0o755)
    path = helper.hooks_dir / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


def recorder(out: Path) -> str:
    """A hook that appends what it got (stdin, environment) to ``out`` as a JSON line."""
    return f"""#!/usr/bin/python3
import json, os, sys
with open("{out}", "a") as fh:
    fh.write(json.dumps({{"stdin": sys.stdin.read(), "env": dict(os.environ)}}) + "\\n")
"""


def seen(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
def hooked(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper (not started) with a 4 s hook timeout."""
    helper = Helper(open_dir / "helper", extra_limits="hook_timeout_seconds = 4")
    yield helper
    helper.stop()


def test_a_hook_gets_the_event_on_stdin_and_in_its_environment(
    hooked: Helper, open_dir: Path
) -> None:
    out = open_dir / "hook-out.jsonl"
    install_hook(hooked, "50-record", recorder(out))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    assert run("vpst-bob", hooked, "reboot web1").code == 77

    def by_kind(kind: str) -> dict[str, Any] | None:
        return next((s for s in seen(out) if s["env"]["VPSSHELL_EVENT"] == kind), None)

    started = wait_until(lambda: by_kind("started"), 15, "the hook saw web1 start")
    event = json.loads(started["stdin"])
    uuid = run("vpst-alice", hooked, "status web1 --json").json()["uuid"]
    assert (event["kind"], event["domain"], event["uuid"], event["user"]) == (
        "started",
        "web1",
        uuid,
        None,
    )
    assert started["env"] == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "VPSSHELL_EVENT": "started",
        "VPSSHELL_DOMAIN": "web1",
        "VPSSHELL_USER": "",
        "VPSSHELL_UUID": uuid,
        "VPSSHELL_HOST": "",
    }
    denied = wait_until(lambda: by_kind("denied"), 15, "the hook saw bob's refusal")
    assert (denied["env"]["VPSSHELL_USER"], denied["env"]["VPSSHELL_DOMAIN"]) == (
        "vpst-bob",
        "web1",
    )
    assert json.loads(denied["stdin"])["detail"].startswith("reboot: ")
    # the first event of all: the policy loaded at start-up
    assert seen(out)[0]["env"]["VPSSHELL_EVENT"] == "policy-reloaded"


def test_a_hung_hook_is_killed_at_the_timeout_while_the_helper_answers(
    hooked: Helper, open_dir: Path
) -> None:
    child = open_dir / "child.pid"
    install_hook(
        hooked,
        "10-hang",
        f'#!/bin/sh\n[ "$VPSSHELL_EVENT" = started ] || exit 0\nsleep 600 &\necho $! > {child}\n'
        "wait\n",
    )
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    pid = int(wait_until(lambda: child.exists() and child.read_text().strip(), 15, "hook ran"))
    assert alive(pid)
    listing = run("vpst-alice", hooked, "list --json")
    assert listing.code == 0 and {d["name"] for d in listing.json()} >= {"web1"}
    assert alive(pid), "the hook must still be running while the helper answered"
    wait_until(lambda: not alive(pid), 15, "the hung hook's child killed at the timeout")
    wait_until(lambda: "10-hang timed out after 4 s" in hooked.log.read_text(), 5, "logged")


def test_stopping_the_helper_kills_a_running_hook(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "helper", extra_limits="hook_timeout_seconds = 300")
    child = open_dir / "child.pid"
    install_hook(
        helper,
        "10-hang",
        f'#!/bin/sh\n[ "$VPSSHELL_EVENT" = started ] || exit 0\nsleep 600 &\necho $! > {child}\n'
        "wait\n",
    )
    helper.start()
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        pid = int(wait_until(lambda: child.exists() and child.read_text().strip(), 15, "ran"))
    finally:
        assert helper.stop() == 0  # SIGTERM; the harness waits at most 10 s
    assert not alive(pid)


def test_a_group_writable_hook_is_skipped_and_logged_once(hooked: Helper, open_dir: Path) -> None:
    bad_out, good_out = open_dir / "bad.jsonl", open_dir / "good.jsonl"
    install_hook(hooked, "10-open", recorder(bad_out), mode=0o775)
    install_hook(hooked, "20-good", recorder(good_out))
    hooked.start()
    start_and_wait(hooked, "vpst-alice", "web1")
    assert run("vpst-alice", hooked, "poweroff web1").code == 0
    wait_until(
        lambda: [s["env"]["VPSSHELL_EVENT"] for s in seen(good_out)][-2:] == ["started", "stopped"],
        15,
        "the good hook ran for both events",
    )
    assert not bad_out.exists()
    log = hooked.log.read_text()
    assert (
        log.count("10-open: group- or world-writable (mode 0775); run chmod go-w; skipped") == 1
    ), log
