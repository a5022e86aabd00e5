"""Tenants log in over real SSH (OpenSSH's sshd, paramiko clients) and get vpsshell.

The sshd runs the project's own Match block; each tenant's login shell is the isolated
launcher, which finds the helper through /etc/vpsshell/vpsshell.toml (see conftest.py). What
reached the helper is read back from its audit log.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from harness import Helper, wait_until
from sshclient import SshConnection, Terminal, process_with_env
from sshsite import ALICE, CAROL, Connect, SshSite

DENIED = "no such domain or permission denied"
GUEST_PROMPT = r"root@web1:~\$"
ALICE_DOMAINS = ["stubborn", "web1", "web2"]


def names(connection: SshConnection) -> list[str]:
    listed = connection.run("list --json")
    assert listed.code == 0, listed
    return sorted(domain["name"] for domain in listed.json())


def state(connection: SshConnection, domain: str) -> str:
    status = connection.run(f"status {domain} --json")
    assert status.code == 0, status
    return str(status.json()["state"])


def start_and_wait(connection: SshConnection, domain: str) -> None:
    started = connection.run(f"start {domain}")
    assert started.code == 0, started
    wait_until(lambda: state(connection, domain) == "running", 10, f"{domain} running")


def table(shell: Terminal, user: str) -> str:
    """``list`` typed at the prompt: the table, up to the next prompt."""
    shell.line("list", "NAME")
    return shell.expect(f"{user}@vpsshell>")


def sent_by(helper: Helper, user: str) -> list[tuple[str, str | None, str]]:
    """(action, domain, decision) of ``user``'s requests, without the toolbar's own (its
    ``list`` requests and its ``events --follow`` stream)."""
    return [
        (entry["action"], entry.get("domain"), entry["decision"])
        for entry in helper.audit()
        if entry.get("user") == user
        and entry["action"] != "list"
        and not (entry["action"] == "events" and entry.get("follow") is True)
    ]


def test_interactive_login_is_the_isolated_launcher_and_exit_closes_with_0(
    ssh_helper: Helper, ssh: Connect, ssh_site: SshSite
) -> None:
    token = uuid.uuid4().hex
    # LC_* is what Debian's sshd accepts from a client: it tags this session's processes
    terminal = ssh(ALICE).terminal(environment={"LC_VPSSHELL_E2E": token})
    terminal.expect("Your domains: web1 shutoff, web2 shutoff, stubborn shutoff")
    terminal.expect(f"{ALICE}@vpsshell>")
    pid, _ = process_with_env(ssh_site.tenants[ALICE].uid, "LC_VPSSHELL_E2E", token)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    interpreter = ssh_site.launcher.read_text().splitlines()[0].removeprefix("#!").split()[0]
    assert argv == [interpreter, "-I", str(ssh_site.launcher)]
    terminal.line("start web1", "web1: starting")
    terminal.line("whoami", f"groups: {ALICE}, vpss-tenants")
    terminal.line("status db1", DENIED)
    terminal.send("exit\r")
    assert terminal.exit_status() == 0
    assert sent_by(ssh_helper, ALICE) == [
        ("start", "web1", "allow"),
        ("whoami", None, "allow"),
        ("status", "db1", "deny"),
    ]
    assert {entry["pid"] for entry in ssh_helper.audit() if entry.get("user") == ALICE} == {pid}


def test_one_command_gets_json_and_its_exit_status(ssh_helper: Helper, ssh: Connect) -> None:
    alice = ssh(ALICE)
    assert names(alice) == ALICE_DOMAINS
    status = alice.run("status web2 --json")
    assert status.code == 0 and status.err == "", status
    assert status.json()["name"] == "web2" and status.json()["state"] == "shutoff"
    assert {"name", "uuid", "state", "vcpus", "memory_mib", "uptime_seconds", "host"} <= set(
        status.json()
    )


def test_every_exit_code_arrives_through_ssh(ssh_helper: Helper, ssh: Connect) -> None:
    alice = ssh(ALICE)
    assert alice.run("whoami").code == 0
    failed = alice.run("reboot web1")  # shut off: nothing to reboot
    assert failed.code == 1, failed
    usage = alice.run("frobnicate web1")
    assert usage.code == 64 and "unknown command" in usage.err, usage
    denied = alice.run("start db1")
    unknown = alice.run("start nosuchdomain")
    assert denied.code == unknown.code == 77, (denied, unknown)
    assert DENIED in denied.err
    assert denied.err.replace("db1", "X") == unknown.err.replace("nosuchdomain", "X")
    start_and_wait(alice, "stubborn")
    timed_out = alice.run("shutdown stubborn --wait=1")  # stubborn never shuts down by itself
    assert timed_out.code == 75, timed_out
    assert sent_by(ssh_helper, ALICE)[:6] == [
        ("whoami", None, "allow"),
        ("reboot", "web1", "allow"),
        ("refused", None, "refused"),  # a usage error is reported, like any refused line
        ("start", "db1", "deny"),
        ("start", "nosuchdomain", "deny"),
        ("start", "stubborn", "allow"),
    ]


def test_helper_down_is_69_and_names_the_socket_from_the_client_config(
    ssh_helper: Helper, ssh: Connect
) -> None:
    alice = ssh(ALICE)
    assert alice.run("whoami").code == 0
    ssh_helper.stop()
    down = alice.run("list")
    assert down.code == 69, down
    # sshd passes no VPSSHELL_SOCKET: the path can only come from /etc/vpsshell/vpsshell.toml
    assert str(ssh_helper.socket) in down.err
    terminal = ssh(ALICE).terminal()  # an interactive login says so, and keeps its prompt
    terminal.expect(f"cannot reach the vpsshell helper at {ssh_helper.socket}")
    terminal.line("whoami", f"cannot reach the vpsshell helper at {ssh_helper.socket}")
    terminal.send("exit\r")
    assert terminal.exit_status() == 0


def test_console_attach_detach_and_takeover_over_ssh(ssh_helper: Helper, ssh: Connect) -> None:
    first, second = ssh(ALICE), ssh(ALICE)
    start_and_wait(first, "web1")
    console = first.terminal("console web1")
    console.expect("Press Ctrl-] to detach")
    console.send("\r")
    console.expect("login: ")
    console.send("root\r")
    console.expect("Password: ")
    console.send("secret\r")
    console.expect(GUEST_PROMPT)
    console.send("echo typed-over-ssh\r")
    console.expect("typed-over-ssh")
    console.send("\x1d")  # Ctrl-]
    assert console.exit_status() == 0

    writer = first.terminal("console web1 --no-replay")
    writer.expect("Press Ctrl-] to detach")
    refused = second.run("console web1")
    assert refused.code == 75 and "--takeover" in refused.err, refused
    taker = second.terminal("console web1 --takeover --no-replay")
    taker.expect("Press Ctrl-] to detach")
    writer.expect(f"taken over by {ALICE}")
    assert writer.exit_status() == 75
    taker.send("echo after-takeover\r")
    taker.expect("after-takeover")
    taker.send("\x1d")
    assert taker.exit_status() == 0
    detached = [
        entry.get("result") for entry in ssh_helper.audit() if entry["action"] == "console-detach"
    ]
    assert detached.count("takeover") == 1 and detached.count("detached") == 2, detached


def test_two_tenants_at_once_each_see_only_their_own(ssh_helper: Helper, ssh: Connect) -> None:
    alice, carol = ssh(ALICE), ssh(CAROL)
    alice_shell, carol_shell = alice.terminal(), carol.terminal()
    alice_shell.expect("Your domains: web1 shutoff, web2 shutoff, stubborn shutoff")
    carol_shell.expect("Your domains: db1 shutoff")
    alice_shell.expect(f"{ALICE}@vpsshell>")
    carol_shell.expect(f"{CAROL}@vpsshell>")
    # both logged in: each one-shot and each prompt answers for its own tenant only
    assert names(alice) == ALICE_DOMAINS
    assert names(carol) == ["db1"]
    assert alice.run("status db1").code == 77
    assert carol.run("start web1").code == 77
    carol_shell.line("start db1", "db1: starting")
    listed = table(alice_shell, ALICE)
    assert "stubborn" in listed and "db1" not in listed
    listed = table(carol_shell, CAROL)
    assert "db1" in listed and "web" not in listed and "stubborn" not in listed
    for shell in (alice_shell, carol_shell):
        shell.send("exit\r")
        assert shell.exit_status() == 0
    assert sent_by(ssh_helper, ALICE) == [("status", "db1", "deny")]
    assert sent_by(ssh_helper, CAROL) == [("start", "web1", "deny"), ("start", "db1", "allow")]
