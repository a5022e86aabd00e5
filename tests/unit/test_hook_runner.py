"""Admin hooks: which files run and which are skipped (and said so once), what a hook gets
(argv, environment, stdin, cwd, its own session), the timeout that kills its whole process
group, bounded output, and the queue that drops instead of waiting.

The helper here trusts the test's own uid as it trusts root, as an unprivileged helper does."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from vpsshell.daemon.events import Event, EventRecord
from vpsshell.daemon.hooks import HookRunner, skip_reason

ME = frozenset({os.geteuid()})


def fake_stat(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


REGULAR = stat.S_IFREG | 0o755


@pytest.mark.parametrize(
    ("name", "info", "reason"),
    [
        ("10-notify", fake_stat(REGULAR), None),
        ("notify.sh", fake_stat(REGULAR), None),
        ("_x", fake_stat(REGULAR), None),
        (".hidden", fake_stat(REGULAR), "name is not"),
        ("-dash", fake_stat(REGULAR), "name is not"),
        ("with space", fake_stat(REGULAR), "name is not"),
        ("10-notify~", fake_stat(REGULAR), "name is not"),
        ("10-notify.dpkg-old", fake_stat(REGULAR), "backup or package manager"),
        ("10-notify.dpkg-dist", fake_stat(REGULAR), "backup or package manager"),
        ("10-notify.rpmnew", fake_stat(REGULAR), "backup or package manager"),
        ("10-notify.rpmsave", fake_stat(REGULAR), "backup or package manager"),
        ("10-notify.bak", fake_stat(REGULAR), "backup or package manager"),
        ("10-notify", fake_stat(stat.S_IFLNK | 0o777), "symbolic link"),
        ("10-notify", fake_stat(stat.S_IFDIR | 0o755), "not a regular file"),
        ("10-notify", fake_stat(stat.S_IFIFO | 0o755), "not a regular file"),
        ("10-notify", fake_stat(REGULAR, uid=1000), "owned by uid 1000"),
        ("10-notify", fake_stat(stat.S_IFREG | 0o775), "group- or world-writable (mode 0775)"),
        ("10-notify", fake_stat(stat.S_IFREG | 0o757), "group- or world-writable"),
        ("10-notify", fake_stat(stat.S_IFREG | 0o644), "not executable"),
    ],
)
def test_which_files_may_run(name: str, info: os.stat_result, reason: str | None) -> None:
    found = skip_reason(name, info, frozenset({0}))
    assert (found is None) if reason is None else (found is not None and reason in found), found


def hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text(body)
    os.chmod(path, mode)
    return path


@pytest.fixture
def hooks_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "hooks.d"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    return directory


def test_selection_in_name_order_and_each_skip_logged_once(
    hooks_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("20-b", "10-a", "30-c.dpkg-old", ".10-hidden"):
        hook(hooks_dir, name, "#!/bin/sh\n")
    hook(hooks_dir, "15-open", "#!/bin/sh\n", mode=0o775)
    runner = HookRunner(str(hooks_dir), timeout=5, queue_limit=10, trusted_uids=ME)
    caplog.set_level(logging.WARNING, "vpsshell.hooks")
    assert runner.hooks() == [str(hooks_dir / "10-a"), str(hooks_dir / "20-b")]
    assert runner.hooks() == [str(hooks_dir / "10-a"), str(hooks_dir / "20-b")]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("15-open" in m and "group- or world-writable" in m for m in messages) == 1
    assert sum("30-c.dpkg-old" in m for m in messages) == 1
    assert sum(".10-hidden" in m for m in messages) == 1
    # fixed, then broken again: said again
    os.chmod(hooks_dir / "15-open", 0o755)
    assert str(hooks_dir / "15-open") in runner.hooks()
    os.chmod(hooks_dir / "15-open", 0o757)
    runner.hooks()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("15-open" in m for m in messages) == 2


def test_an_unsafe_directory_runs_nothing(
    hooks_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook(hooks_dir, "10-a", "#!/bin/sh\n")
    os.chmod(hooks_dir, 0o775)
    runner = HookRunner(str(hooks_dir), timeout=5, queue_limit=10, trusted_uids=ME)
    assert runner.hooks() == []
    assert runner.hooks() == []
    assert sum("no hook runs" in r.getMessage() for r in caplog.records) == 1
    untrusted = HookRunner(str(hooks_dir), timeout=5, queue_limit=10, trusted_uids=frozenset())
    os.chmod(hooks_dir, 0o755)
    assert untrusted.hooks() == []  # owned by someone the helper does not trust
    assert runner.hooks() == [str(hooks_dir / "10-a")]
    assert HookRunner(str(hooks_dir / "missing"), timeout=5, queue_limit=1).hooks() == []


def test_a_hook_gets_the_event_on_stdin_a_fixed_environment_and_its_own_session(
    hooks_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seen.json"
    path = hook(
        hooks_dir,
        "10-record",
        f"""#!/usr/bin/python3
import json, os, sys
json.dump({{"stdin": sys.stdin.read(), "env": dict(os.environ), "argv": sys.argv,
           "cwd": os.getcwd(), "leader": os.getsid(0) == os.getpid()}}, open("{out}", "w"))
print("hello from the hook"); print("\\x1b[31mred", file=sys.stderr); sys.exit(3)
""",
    )
    event = EventRecord(10, 10).record(
        "console-takeover", domain="web1", uuid="u-1", user="bob", detail="from alice"
    )
    runner = HookRunner(str(hooks_dir), timeout=10, queue_limit=10, trusted_uids=ME)
    status = asyncio.run(runner.run_hook(str(path), event))
    assert status == 3
    seen = json.loads(out.read_text())
    assert json.loads(seen["stdin"]) == event.to_json()
    assert seen["env"] == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "VPSSHELL_EVENT": "console-takeover",
        "VPSSHELL_DOMAIN": "web1",
        "VPSSHELL_USER": "bob",
        "VPSSHELL_UUID": "u-1",
        "VPSSHELL_HOST": "",
    }
    assert seen["argv"] == [str(path)]
    assert seen["cwd"] == "/"
    assert seen["leader"] is True


def test_output_and_exit_status_go_to_the_log_bounded_and_inert(
    hooks_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = hook(
        hooks_dir,
        "10-chatty",
        "#!/bin/sh\nprintf 'A%.0s' $(seq 20000)\nprintf '\\033[31mred\\n' >&2\nexit 3\n",
    )
    event = EventRecord(10, 10).record("started", domain="web1")
    caplog.set_level(logging.INFO, "vpsshell.hooks")
    runner = HookRunner(str(hooks_dir), timeout=10, queue_limit=10, trusted_uids=ME)
    assert asyncio.run(runner.run_hook(str(path), event)) == 3
    messages = [r.getMessage() for r in caplog.records]
    [stdout] = [m for m in messages if "10-chatty stdout" in m]
    assert stdout.count("A") == 4096
    [stderr] = [m for m in messages if "10-chatty stderr" in m]
    assert "\x1b" not in stderr and "\\x1b[31mred" in stderr
    assert any("exited with status 3" in m for m in messages)


def test_the_timeout_kills_the_whole_process_group(hooks_dir: Path, tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    path = hook(hooks_dir, "10-hang", f"#!/bin/sh\nsleep 600 &\necho $! > {child}\nwait\n")
    event = EventRecord(10, 10).record("started", domain="web1")
    runner = HookRunner(str(hooks_dir), timeout=1, queue_limit=10, trusted_uids=ME)
    assert asyncio.run(asyncio.wait_for(runner.run_hook(str(path), event), 10)) is None
    pid = int(child.read_text())
    # killed, not merely orphaned: /proc/PID is gone once its new parent reaps it
    stat_path = Path(f"/proc/{pid}/stat")
    assert not stat_path.exists() or stat_path.read_text().split()[2] == "Z"


def queued(runner: HookRunner) -> list[Event]:
    """Everything waiting, in the order the worker would take it (emptying the queues)."""
    taken = []
    while (event := runner._next()) is not None:
        taken.append(event)
    return taken


def test_tenants_events_never_push_out_a_lifecycle_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = EventRecord(100, 100)
    runner = HookRunner(
        "/nonexistent", timeout=1, queue_limit=4, tenant_queue_limit=6, tenant_queue_per_user=3
    )
    record.add_listener(runner.submit)  # no worker: nothing is taken off the queues
    record.record("started", domain="web1", uuid="u1")
    for index in range(750):  # one tenant's loop of console --takeover
        record.record("console-takeover", domain="m1", uuid="m", user="mallory", detail=str(index))
        record.record("denied", domain="web1", user="mallory")
    record.record("console-attached", domain="db1", uuid="d", user="carol", detail="write")
    record.record("crashed", domain="db1", uuid="d", detail="panic")
    taken = queued(runner)
    # lifecycle first; then the tenants' events, users taking turns: mallory's newest three
    # (in order) and carol's, which waits for one of mallory's, not for all of them
    assert [(e.kind, e.domain) for e in taken[:2]] == [("started", "web1"), ("crashed", "db1")]
    assert [(e.kind, e.user) for e in taken[2:]] == [
        ("denied", "mallory"),
        ("console-attached", "carol"),
        ("console-takeover", "mallory"),
        ("denied", "mallory"),
    ]
    assert taken[4].detail == "749"
    assert (runner.dropped_lifecycle, runner.dropped_tenant_caused) == (0, 1497)
    assert runner.dropped == 1497
    assert "queue of tenants' events full; console-takeover m1 by mallory dropped" in caplog.text


def test_full_queues_take_room_from_whoever_has_the_most_waiting() -> None:
    record = EventRecord(100, 100)
    runner = HookRunner(
        "/nonexistent", timeout=1, queue_limit=4, tenant_queue_limit=4, tenant_queue_per_user=3
    )
    record.add_listener(runner.submit)
    for user in ("alice", "bob", "carol"):  # under their shares, but 6 in a queue of 4
        for _ in range(2):
            record.record("console-attached", domain="x", uuid="x", user=user)
    users = [e.user for e in queued(runner) if e.kind == "console-attached"]
    # alice (most waiting) made room for carol's first; carol's second, a tie with bob, her own
    assert sorted(users) == ["alice", "bob", "bob", "carol"]
    # lifecycle events, per domain: a domain in a start/stop loop loses its own oldest
    record.record("crashed", domain="db1", uuid="d")
    for index in range(10):
        record.record(
            "started" if index % 2 else "stopped", domain="web1", uuid="w", detail=str(index)
        )
    record.record("started", domain="db1", uuid="d")  # web1 makes room again
    taken = queued(runner)
    # and the domains take turns: db1's second event waits for one of web1's, not for all
    assert [(e.domain, e.kind, e.detail) for e in taken] == [
        ("db1", "crashed", ""),
        ("web1", "stopped", "8"),
        ("db1", "started", ""),
        ("web1", "started", "9"),
    ]
    assert runner.dropped_lifecycle == 8


def test_hooks_run_one_at_a_time_in_event_order(hooks_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "order"
    for name in ("20-second", "10-first"):
        hook(hooks_dir, name, f'#!/bin/sh\necho "$VPSSHELL_EVENT {name}" >> {out}\n')

    async def scenario() -> None:
        record = EventRecord(10, 10)
        runner = HookRunner(str(hooks_dir), timeout=5, queue_limit=10, trusted_uids=ME)
        record.add_listener(runner.submit)
        runner.start()
        for kind in ("started", "rebooted", "stopped"):
            record.record(kind, domain="web1")
        while len(out.read_text().splitlines() if out.exists() else []) < 6:
            await asyncio.sleep(0.02)
        await runner.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert out.read_text().splitlines() == [
        f"{kind} {name}"
        for kind in ("started", "rebooted", "stopped")
        for name in ("10-first", "20-second")
    ]
