"""``vpsshelld`` without ``--foreground``: it returns once the helper listens, logs to syslog,
holds its pid file, and a second helper, or one that cannot start, fails loudly (exit 1 and
the reason on stderr) in both modes instead of exiting 0 in silence."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, Helper, run, wait_until
from syslogsink import SyslogSink

DAEMON_INFO = (3 << 3) | 6  # syslog priority daemon.info


def vpsshelld(
    helper: Helper, *options: str, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``vpsshelld --config CONFIG OPTIONS...`` as the admin runs it, under ``timeout 10``: it
    must come back by itself, whatever happens."""
    return subprocess.run(
        [*(prefix or []), "timeout", "10", str(BIN / "vpsshelld"), "--config", str(helper.config),
         *options],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def pid_file(helper: Helper) -> Path:
    return helper.socket.parent / "vpsshelld.pid"  # the default: beside the tenant socket


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), 15, f"vpsshelld {pid} still running after SIGTERM")


@pytest.fixture
def unstarted(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper's config and directories, for vpsshelld to be started by hand; whatever
    helper the test left running is stopped."""
    helper = Helper(open_dir / "helper")
    yield helper
    try:
        stop(int(pid_file(helper).read_text()))
    except (FileNotFoundError, ValueError):
        pass


def test_detached_it_returns_once_listening_logs_to_syslog_and_holds_its_pid_file(
    unstarted: Helper, open_dir: Path
) -> None:
    sink = SyslogSink(open_dir)
    try:
        started = vpsshelld(unstarted, prefix=sink.with_dev_log())
        assert started.returncode == 0, started
        pid = int(pid_file(unstarted).read_text())
        assert alive(pid)
        priority, text = sink.wait_for("listening on")
        assert priority == DAEMON_INFO and text.startswith(f"vpsshelld[{pid}]: INFO")
        assert run("vpst-carol", unstarted, "list").code == 0  # it serves: carol is in the group
    finally:
        sink.close()
    stop(pid)
    assert not pid_file(unstarted).exists()  # removed at a clean exit
    assert not unstarted.socket.exists() and not unstarted.admin_socket.exists()


@pytest.mark.parametrize("mode", [(), ("--foreground",)], ids=["detached", "foreground"])
def test_a_second_helper_fails_loudly_and_leaves_the_first_alone(
    unstarted: Helper, mode: tuple[str, ...]
) -> None:
    assert vpsshelld(unstarted).returncode == 0
    first = int(pid_file(unstarted).read_text())
    second = vpsshelld(unstarted, *mode)
    assert second.returncode == 1, second  # neither 0 nor timeout's 124
    assert (
        f"already listening or starting: pid {first} holds {pid_file(unstarted)}" in second.stderr
    )
    assert int(pid_file(unstarted).read_text()) == first and alive(first)
    assert run("vpst-carol", unstarted, "list").code == 0


def test_a_pid_file_left_by_a_dead_helper_is_taken_over(unstarted: Helper) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file(unstarted).parent.mkdir(parents=True, exist_ok=True)
    pid_file(unstarted).write_text(f"{dead.pid}\n")
    started = vpsshelld(unstarted)
    assert started.returncode == 0, started
    pid = int(pid_file(unstarted).read_text())
    assert pid != dead.pid and alive(pid)
    # no syslog here (no /dev/log on the test machine): the log is a file beside the audit log
    log_file = unstarted.audit_log.parent / "vpsshelld.log"
    wait_until(lambda: "listening on" in log_file.read_text(), 10, "no start in vpsshelld.log")
    assert f"vpsshelld[{pid}]: INFO" in log_file.read_text()


def test_a_detached_helper_that_cannot_start_says_why_and_exits_1(unstarted: Helper) -> None:
    unstarted.set_backend('[backend]\ntype = "no-such-backend"\n')
    failed = vpsshelld(unstarted)
    assert failed.returncode == 1, failed
    assert "no-such-backend" in failed.stderr and "did not start" in failed.stderr
    assert not pid_file(unstarted).exists() and not unstarted.socket.exists()
