"""What a tenant must not get over SSH: a shell, file transfer, ``~/.ssh/rc``, forwarded ports,
agent or X11, or an environment of their choosing. Every attempt is made for real, with
paramiko, against sshd running the shipped Match block (``sshd/vpsshell.conf``).

Commands reach vpsshell, are refused with 64 and audited as "refused". Everything sshd itself
offers is stopped by the Match block; each of those probes also runs against the same sshd
without the block (``unlocked_sshd``), where it must get through: so a probe that says
"refused" could have said otherwise.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from harness import Helper
from sshclient import SFTP_SERVER, SshConnection, Sshd, Terminal, process_with_env
from sshsite import ALICE, Connect, SshSite, SshTenant

TAG = "LC_VPSSHELL_E2E"  # Debian's sshd accepts LC_* from clients: it finds the session's shell
SHELL_AND_TRANSFER = [
    "/bin/sh",
    "bash --noprofile",
    "bash -i",
    "sh -c id",
    "scp -t /tmp",
    "scp -f /etc/passwd",
    "rsync --server -vlogDtpre.iLsfxC . /tmp",
    "rsync --server --sender -vlogDtpre.iLsfxC . /etc",
]


def refused_lines(helper: Helper) -> list[str]:
    return [
        entry["line"]
        for entry in helper.audit()
        if entry.get("user") == ALICE and entry["decision"] == "refused"
    ]


def login_shell(
    connection: SshConnection,
    tenant: SshTenant,
    *,
    environment: dict[str, str] | None = None,
    agent: bool = False,
    x11: bool = False,
) -> tuple[dict[str, str], str] | None:
    """``ssh -t [-A] [-X]`` into the login shell: the environment sshd started it with and
    what the terminal showed. None if sshd refused a request (it then closes the channel)."""
    token = uuid.uuid4().hex
    channel = connection.session()
    channel.get_pty(term="xterm-256color", width=100, height=30)
    if x11:
        try:
            channel.request_x11(single_connection=True)
        except paramiko.SSHException:
            return None
    if agent:  # no reply is defined for this request: only the session shows whether it took
        channel.request_forward_agent(lambda forwarded: forwarded.close())
    channel.update_environment({**(environment or {}), TAG: token})
    channel.invoke_shell()
    terminal = Terminal(channel)
    terminal.expect(f"{tenant.name}@vpsshell>")
    _, env = process_with_env(tenant.uid, TAG, token)
    terminal.send("exit\r")
    assert terminal.exit_status() == 0
    return env, terminal.text()


# -- what sshd offers: each probe says whether it got through ----------------------------------


def forwards_local_port(connection: SshConnection, helper: Helper, tenant: SshTenant) -> bool:
    """``ssh -L``: a direct-tcpip channel to a listener on the server's loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        try:
            channel = connection.transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 40022), timeout=10
            )
        except paramiko.ChannelException as exc:
            assert exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED, exc
            # sshd connects before it confirms a channel: a refusal leaves nothing queued
            assert select.select([listener], [], [], 0)[0] == []
            return False
        peer, _ = listener.accept()
        channel.sendall(b"through")
        assert peer.recv(7) == b"through"
        peer.close()
        channel.close()
        return True


def forwards_remote_port(connection: SshConnection, helper: Helper, tenant: SshTenant) -> bool:
    """``ssh -R``: sshd listening on the server's loopback for the client."""
    try:
        port = connection.transport.request_port_forward("127.0.0.1", 0)
    except paramiko.SSHException:
        return False
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass  # sshd really listens there
    connection.transport.cancel_port_forward("127.0.0.1", port)
    return True


def forwards_agent(connection: SshConnection, helper: Helper, tenant: SshTenant) -> bool:
    """``ssh -A``: sshd listens on an agent socket for the session and names it in
    SSH_AUTH_SOCK."""
    session = login_shell(connection, tenant, agent=True)
    assert session is not None
    env, _ = session
    return "SSH_AUTH_SOCK" in env


def forwards_x11(connection: SshConnection, helper: Helper, tenant: SshTenant) -> bool:
    """``ssh -X``: a DISPLAY for the session."""
    session = login_shell(connection, tenant, x11=True)
    if session is None:
        return False
    env, _ = session
    return "DISPLAY" in env


def runs_user_rc(connection: SshConnection, helper: Helper, tenant: SshTenant) -> bool:
    """``~/.ssh/rc``: sshd would run it through the login shell, as ``-c '/bin/sh .ssh/rc'``."""
    ssh_dir = tenant.home / ".ssh"
    marker = tenant.home / "rc-ran"
    ssh_dir.mkdir(mode=0o700)
    try:
        rc = ssh_dir / "rc"
        rc.write_text(f"touch {marker}\n")
        for path in (ssh_dir, rc):
            os.chown(path, tenant.uid, -1)
        listed = connection.run("list --json")
        assert listed.code == 0, listed
        assert not marker.exists(), "~/.ssh/rc ran"
        return any(".ssh/rc" in line for line in refused_lines(helper))
    finally:
        shutil.rmtree(ssh_dir)


Probe = Callable[[SshConnection, Helper, SshTenant], bool]
SSHD_PROBES: dict[str, Probe] = {
    "local port forwarding": forwards_local_port,
    "remote port forwarding": forwards_remote_port,
    "agent forwarding": forwards_agent,
    "X11 forwarding": forwards_x11,
    "~/.ssh/rc": runs_user_rc,
}


@pytest.mark.parametrize("probe", SSHD_PROBES)
def test_the_match_block_refuses(
    probe: str, ssh_helper: Helper, ssh: Connect, ssh_site: SshSite
) -> None:
    alice = ssh(ALICE)
    assert not SSHD_PROBES[probe](alice, ssh_helper, ssh_site.tenants[ALICE]), probe
    assert alice.run("whoami").code == 0  # refused, and the connection goes on


@pytest.mark.parametrize("probe", SSHD_PROBES)
def test_without_the_match_block_the_probe_gets_through(
    probe: str, ssh_helper: Helper, ssh: Connect, ssh_site: SshSite, unlocked_sshd: Sshd
) -> None:
    if probe == "X11 forwarding" and shutil.which("xauth") is None:
        pytest.skip("sshd forwards X11 only when xauth is installed")
    alice = ssh(ALICE, unlocked_sshd)
    assert SSHD_PROBES[probe](alice, ssh_helper, ssh_site.tenants[ALICE]), probe


# -- what reaches vpsshell ----------------------------------------------------------------------


def test_shells_and_file_transfer_get_nothing_and_are_audited(
    ssh_helper: Helper, ssh: Connect
) -> None:
    alice = ssh(ALICE)
    for command in SHELL_AND_TRANSFER:
        result = alice.run(command, stdin=b"id\n")
        assert (result.code, result.out) == (64, ""), (command, result)
        assert "unknown command" in result.err, (command, result)
    on_a_pty = alice.terminal("/bin/sh")
    on_a_pty.send("id\r")
    assert on_a_pty.exit_status() == 64
    assert "uid=" not in on_a_pty.text()
    assert refused_lines(ssh_helper) == [*SHELL_AND_TRANSFER, "/bin/sh"]


def test_the_sftp_subsystem_starts_no_sftp_server(ssh_helper: Helper, ssh: Connect) -> None:
    alice = ssh(ALICE)
    with pytest.raises(paramiko.SSHException):
        paramiko.SFTPClient.from_transport(alice.transport)
    channel = alice.session()
    channel.invoke_subsystem("sftp")  # sshd starts it through the login shell, which refuses
    assert channel.recv_exit_status() == 64
    assert refused_lines(ssh_helper) == [SFTP_SERVER, SFTP_SERVER]


def hostile_environment(directory: Path) -> tuple[dict[str, str], Path]:
    """Variables that would run the tenant's code in the login shell if sshd passed them on."""
    evil = directory / "evil"
    evil.mkdir()
    os.chmod(evil, 0o777)
    marker = evil / "marker"
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    for name in ("sitecustomize.py", "usercustomize.py", "startup.py"):
        (evil / name).write_text(code)
    (evil / "bash_env.sh").write_text(f"touch {marker}\n")
    return {
        "LD_PRELOAD": "/nonexistent/vpsshell-e2e-preload.so",  # ld.so would complain on stderr
        "PYTHONHOME": "/nonexistent",  # Python would not even start
        "PYTHONPATH": str(evil),
        "PYTHONSTARTUP": str(evil / "startup.py"),
        "PYTHONINSPECT": "1",
        "BASH_ENV": str(evil / "bash_env.sh"),
        "VPSSHELL_SOCKET": "/nonexistent/vpsshelld.sock",  # the shell would say 69
    }, marker


def test_environment_sent_by_the_client_changes_nothing(
    ssh_helper: Helper, ssh: Connect, ssh_site: SshSite, open_dir: Path
) -> None:
    hostile, marker = hostile_environment(open_dir)
    alice = ssh(ALICE)
    listed = alice.run("list --json", environment=hostile)  # SendEnv/SetEnv with a command
    assert (listed.code, listed.err) == (0, ""), listed
    assert sorted(domain["name"] for domain in listed.json()) == ["stubborn", "web1", "web2"]
    session = login_shell(alice, ssh_site.tenants[ALICE], environment=hostile)
    assert session is not None
    env, screen = session
    assert sorted(set(hostile) & set(env)) == []
    assert "ld.so" not in screen and "Traceback" not in screen
    assert not marker.exists(), "code from the client's environment ran"
    lists = [
        e["pid"] for e in ssh_helper.audit() if e.get("user") == ALICE and e["action"] == "list"
    ]
    assert len(set(lists)) == 2  # both sessions reached the helper
