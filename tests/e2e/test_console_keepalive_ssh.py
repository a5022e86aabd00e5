"""A tenant's ssh client that dies or freezes on a console frees the console's writer slot, over
real SSH with OpenSSH's own client: killed, at once (its connection closes); stopped without a
word (a machine gone, a network cut), within the shipped snippet's ClientAlive bound, here made
short (1 s, 2 probes) so the test need not wait the shipped 90 s."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Helper, wait_until
from sshclient import Sshd, shipped_snippet
from sshsite import ALICE, SSH_GROUP, Connect, SshSite

SHIPPED_ALIVE = ("ClientAliveInterval 30\n", "ClientAliveCountMax 3\n")
BRISK_ALIVE = ("ClientAliveInterval 1\n", "ClientAliveCountMax 2\n")
BOUND_SECONDS = 1 * 2


@pytest.fixture(scope="module")
def brisk_sshd(ssh_site: SshSite) -> Iterator[Sshd]:
    """The shipped snippet with a short ClientAlive bound."""
    snippet = shipped_snippet(SSH_GROUP, ssh_site.root / "sshd-brisk" / "authorized_keys")
    for shipped, brisk in zip(SHIPPED_ALIVE, BRISK_ALIVE, strict=True):
        assert shipped in snippet, f"the shipped snippet no longer has {shipped.strip()}"
        snippet = snippet.replace(shipped, brisk)
    sshd = Sshd(ssh_site.root / "sshd-brisk", snippet)
    for tenant in ssh_site.tenants.values():
        sshd.authorize(tenant.name, tenant.key)
    sshd.start()
    yield sshd
    sshd.stop()


def openssh_console(site: SshSite, sshd: Sshd, user: str, root: Path) -> subprocess.Popen[bytes]:
    """``ssh -tt host console web1`` with OpenSSH's client, its stdin a pipe kept open."""
    key = root / f"{user}.key"
    if not key.exists():
        site.tenants[user].key.write_private_key_file(str(key))
        os.chmod(key, 0o600)
    known = root / "known_hosts"
    host_key = sshd.host_key
    known.write_text(f"[127.0.0.1]:{sshd.port} {host_key.get_name()} {host_key.get_base64()}\n")
    return subprocess.Popen(
        ["ssh", "-tt", "-i", str(key), "-p", str(sshd.port)]
        + ["-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known}"]
        + ["-o", "StrictHostKeyChecking=yes", "-o", "ServerAliveInterval=0"]
        + [f"{user}@127.0.0.1", "console web1 --no-replay"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def writers(helper: Helper) -> list[str]:
    return [s["user"] for s in helper.admin("sessions") if s["mode"] == "write"]


def test_a_killed_or_frozen_ssh_client_frees_the_writer_slot(
    ssh_site: SshSite, brisk_sshd: Sshd, ssh_helper: Helper, ssh: Connect, open_dir: Path
) -> None:
    connection = ssh(ALICE, brisk_sshd)
    assert connection.run("start web1").code == 0

    killed = openssh_console(ssh_site, brisk_sshd, ALICE, open_dir)
    wait_until(lambda: writers(ssh_helper) == [ALICE], 20, "the ssh client attached as writer")
    killed.kill()  # SIGKILL: its TCP connection closes with it
    killed.wait()
    wait_until(lambda: writers(ssh_helper) == [], 10, "the killed client's slot freed")

    frozen = openssh_console(ssh_site, brisk_sshd, ALICE, open_dir)
    try:
        wait_until(lambda: writers(ssh_helper) == [ALICE], 20, "attached again as writer")
        frozen.send_signal(signal.SIGSTOP)  # the connection stays open; nothing answers on it
        # sshd drops it after BOUND_SECONDS of unanswered probes; the login shell gets SIGHUP
        wait_until(lambda: writers(ssh_helper) == [], BOUND_SECONDS + 10, "the frozen slot freed")
    finally:
        frozen.send_signal(signal.SIGCONT)
        frozen.kill()
        frozen.wait()

    # the slot is free: a new session is the writer without --takeover
    console = connection.terminal("console web1 --no-replay")
    console.expect(r"Press Ctrl-\] to detach")
    console.send("\x1d")
    assert console.exit_status() == 0
    assert "timeout" in brisk_sshd.log_tail().lower()  # sshd's own words: it timed the client out
