"""The helper under systemd's protocols: readiness notification and socket activation."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from harness import BIN, Helper, run, wait_until


def test_ready_notification_after_listening(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "h")
    notify_path = open_dir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(15)
    process = subprocess.Popen(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--foreground"],
        env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
        stderr=subprocess.DEVNULL,
    )
    try:
        assert notify.recv(4096) == b"READY=1"
        assert helper.socket.exists()  # ready means listening
        process.terminate()
        assert notify.recv(4096) == b"STOPPING=1"
        assert process.wait(10) == 0
    finally:
        process.kill()
        notify.close()


@pytest.mark.skipif(
    not Path("/usr/bin/systemd-socket-activate").exists(),
    reason="systemd-socket-activate (package systemd) is not installed",
)
def test_socket_activation_uses_the_inherited_socket(open_dir: Path, tenants: None) -> None:
    helper = Helper(open_dir / "h")
    helper.socket.parent.mkdir(mode=0o755)
    process = subprocess.Popen(
        [
            "/usr/bin/systemd-socket-activate",
            "-l",
            str(helper.socket),
            "--",
            str(BIN / "vpsshelld"),
            "--config",
            str(helper.config),
            "--foreground",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(helper.socket.exists, 10, "systemd-socket-activate listening")
        os.chmod(helper.socket, 0o666)
        result = run("vpst-alice", helper, "list --json")  # the first connection starts it
        assert result.code == 0, result
        assert {d["name"] for d in result.json()} == {"web1", "web2", "stubborn"}
        process.terminate()
        process.wait(10)
    finally:
        process.kill()
