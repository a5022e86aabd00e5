"""The helper's own life: config check, clean stop, restart with state, crash injection."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness import BIN, Helper, python_as, run, state_of, wait_until


def test_check_config_accepts_good_and_names_bad_keys(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "h")
    good = subprocess.run(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good
    helper.config.write_text(helper.config.read_text().replace("audit_log", "audit_lgo"))
    bad = subprocess.run(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "audit_lgo" in bad.stderr
    assert not helper.socket.exists()  # checking binds nothing


def test_check_config_reports_a_broken_policy(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "h", policy="allow user:x start *\n")
    result = subprocess.run(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--check-config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "10-tenants.policy:1" in result.stderr


def test_sigterm_stops_cleanly_and_state_survives_a_restart(helper: Helper) -> None:
    assert run("vpst-alice", helper, "start web1").code == 0
    wait_until(lambda: state_of(helper, "vpst-alice", "web1") == "running", 10, "web1 running")
    before = run("vpst-alice", helper, "status web1 --json").json()
    assert helper.stop() == 0
    assert not helper.socket.exists() and not helper.admin_socket.exists()
    helper.start()
    after = run("vpst-alice", helper, "status web1 --json").json()
    assert after["state"] == "running" and after["uuid"] == before["uuid"]
    assert after["uptime_seconds"] >= before["uptime_seconds"]


def test_a_second_helper_on_the_same_socket_refuses_to_start(helper: Helper) -> None:
    second = subprocess.run(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--foreground"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1 and "already listening" in second.stderr
    assert run("vpst-alice", helper, "list").code == 0


def test_injected_crash_shows_as_crashed_and_reset_recovers(helper: Helper) -> None:
    run("vpst-alice", helper, "start web1")
    wait_until(lambda: state_of(helper, "vpst-alice", "web1") == "running", 10, "web1 running")
    helper.admin("crash", domain="web1")
    assert state_of(helper, "vpst-alice", "web1") == "crashed"
    assert run("vpst-alice", helper, "reset web1").code == 0
    wait_until(
        lambda: state_of(helper, "vpst-alice", "web1") == "running", 10, "web1 running again"
    )


def test_admin_socket_refuses_tenants(helper: Helper) -> None:
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print('refused', e.errno)\n"
    )
    result = subprocess.run(
        python_as("vpst-alice", probe, str(helper.admin_socket)),
        capture_output=True,
        text=True,
    )
    assert "refused 13" in result.stdout  # EACCES: mode 0600, owned by root
