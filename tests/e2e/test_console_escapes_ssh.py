"""Console escapes over real SSH with a pty (``ssh -t host console web1``, and ``console`` typed
in the interactive login shell): the same keys work as on a local terminal."""

from __future__ import annotations

from harness import Helper, wait_until
from sshsite import ALICE, Connect

GUEST_PROMPT = r"root@web1:~\$"


def test_escapes_over_ssh_t_and_in_the_login_shell(ssh_helper: Helper, ssh: Connect) -> None:
    connection = ssh(ALICE)
    assert connection.run("start web1").code == 0
    wait_until(
        lambda: connection.run("status web1 --json").json()["state"] == "running",
        10,
        "web1 running",
    )
    console = connection.terminal("console web1")
    console.expect(r"Press Ctrl-\] to detach\. After Enter, ~\? lists the escapes\.")
    console.send("\r")
    console.expect("login: ")
    console.send("root\r")
    console.expect("Password: ")
    console.send("secret\r")
    console.expect(GUEST_PROMPT)
    console.send("~?")
    console.expect(r"~B  then a key")
    console.send("~~ one-tilde\r")
    console.expect("-sh: ~: not found")
    console.expect(GUEST_PROMPT)
    console.send("~Bm")  # the site's policy gives no sysrq: refused here, the session goes on
    console.expect(r"sysrq refused: ")
    console.send("~.")
    assert console.exit_status() == 0

    shell = connection.terminal()
    shell.expect(f"{ALICE}@vpsshell>")
    shell.line("console web1 --no-replay", r"Press Ctrl-\] to detach")
    shell.send("~.")
    shell.expect(f"{ALICE}@vpsshell>")
    shell.send("exit\r")
    assert shell.exit_status() == 0
