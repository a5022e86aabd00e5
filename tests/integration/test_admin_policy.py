"""``vpsshell-admin`` against a running helper: real processes, real tenants, real sockets.

Each test runs the installed ``vpsshell-admin`` as a subprocess on the helper's policy
directory and then checks what tenants can actually do through ``vpsshell -c``.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
from pathlib import Path

from harness import BIN, Helper, Result, run, vpsshell_admin, wait_until

MANAGED = "90-vpsshell-admin.policy"


def admin(helper: Helper, *argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
    return vpsshell_admin(helper, *argv, stdin=stdin, env=env, timeout=60)


def editor_env(path: Path, body: str) -> dict[str, str]:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return {"EDITOR": str(path)}


def test_grant_explain_revoke_round_trip(helper: Helper) -> None:
    assert run("vpst-bob", helper, "status web2").code == 77
    granted = admin(helper, "policy", "grant", "user:vpst-bob", "@operator", "web2")
    assert granted.code == 0, granted
    assert "helper reloaded" in granted.out
    # the grant is in force when the command returns: no polling needed
    assert run("vpst-bob", helper, "start web2").code == 0
    explained = admin(helper, "policy", "explain", "vpst-bob", "start", "web2")
    assert explained.code == 0
    assert f"* {MANAGED}:4: allow user:vpst-bob" in explained.out
    revoked = admin(helper, "policy", "revoke", "user:vpst-bob", "@operator", "web2")
    assert revoked.code == 0, revoked
    assert run("vpst-bob", helper, "status web2").code == 77
    assert admin(helper, "policy", "explain", "vpst-bob", "start", "web2").code == 1
    actions = [r["action"] for r in helper.audit() if r.get("socket") == "admin"]
    assert actions == ["admin:domains", "admin:reload", "admin:reload"]  # grant checks domains


def test_edit_with_a_syntax_error_is_never_installed(helper: Helper, open_dir: Path) -> None:
    before = (helper.policy_dir / "10-tenants.policy").read_text()
    env = editor_env(open_dir / "ed.sh", 'echo "allow user:vpst-bob @operatr web2" >> "$1"\n')
    result = admin(helper, "policy", "edit", "10-tenants.policy", stdin="x\n", env=env)
    assert result.code == 1
    assert f"{helper.policy_dir}/10-tenants.policy:8: unknown set @operatr" in result.out
    assert (helper.policy_dir / "10-tenants.policy").read_text() == before
    assert run("vpst-alice", helper, "status web1").code == 0
    assert not [r for r in helper.audit() if r.get("result") == "broken"]


def test_edit_applied_reaches_the_helper(helper: Helper, open_dir: Path) -> None:
    env = editor_env(open_dir / "ed.sh", 'echo "allow user:vpst-bob @viewer web2" >> "$1"\n')
    result = admin(helper, "policy", "edit", "10-tenants.policy", stdin="a\n", env=env)
    assert result.code == 0, result
    assert "+ vpst-bob status,watch,log,events web2" in result.out
    assert run("vpst-bob", helper, "status web2").code == 0
    mode = (helper.policy_dir / "10-tenants.policy").stat()
    assert (mode.st_uid, mode.st_mode & 0o777) == (0, 0o644)


def test_a_second_change_is_refused_while_an_edit_is_open(helper: Helper, open_dir: Path) -> None:
    editing, go = open_dir / "editing", open_dir / "go"
    env = editor_env(
        open_dir / "ed.sh",
        f"touch {editing}\nwhile [ ! -e {go} ]; do sleep 0.05; done\n"
        'echo "allow user:vpst-bob log web2" >> "$1"\n',
    )
    first = subprocess.Popen(
        [str(BIN / "vpsshell-admin"), "--config", str(helper.config), "policy", "edit"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    try:
        wait_until(editing.exists, 15, "the first edit never opened its editor")
        second = admin(helper, "policy", "grant", "user:vpst-bob", "start", "web2")
        assert second.code == 75
        assert "being changed by another vpsshell-admin" in second.err
        assert not (helper.policy_dir / MANAGED).exists()
        go.touch()
        out, _ = first.communicate("a\n", timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, out
    assert run("vpst-bob", helper, "log web2").code != 77
    assert admin(helper, "policy", "grant", "user:vpst-bob", "start", "web2").code == 0


def test_a_held_lock_refuses_edit_and_grant(helper: Helper) -> None:
    fd = os.open(helper.policy_dir / ".vpsshell-admin.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert admin(helper, "policy", "edit", env={"EDITOR": "/bin/true"}).code == 75
        assert admin(helper, "policy", "revoke", "user:vpst-alice", "*", "*").code == 75
    finally:
        os.close(fd)
    assert admin(helper, "policy", "edit", env={"EDITOR": "/bin/true"}).code == 0


def test_policy_test_file(helper: Helper, open_dir: Path) -> None:
    good = open_dir / "expect.txt"
    good.write_text(
        "# our expectations\n"
        "allow vpst-alice reboot web1\n"
        "allow vpst-carol start db1      # via the team group\n"
        "deny  vpst-mallory status db1   # suspended\n"
        "deny  vpst-bob status web3      # expired\n"
    )
    result = admin(helper, "policy", "test", str(good))
    assert (result.code, result.out) == (0, "4 assertion(s), 0 failed\n")
    bad = open_dir / "wrong.txt"
    bad.write_text("allow vpst-alice reboot web1\nallow vpst-bob start web1\n")
    result = admin(helper, "policy", "test", str(bad))
    assert result.code == 1
    assert result.out.startswith(f"{bad}:2: expected allow, got deny: vpst-bob start web1")


def test_check_strict_finds_the_expired_rule(helper: Helper) -> None:
    assert admin(helper, "policy", "check").code == 0
    result = admin(helper, "policy", "check", "--strict")
    assert result.code == 1
    assert f"{helper.policy_dir}/10-tenants.policy:6: warning: expired on 2020-01-01" in result.out


def test_who_and_list_see_group_members(helper: Helper) -> None:
    who = admin(helper, "policy", "who", "db1")
    assert "vpst-carol" in who.out and "group:vpst-team" in who.out
    assert "vpst-mallory" not in who.out  # in the group, but denied everything
    listing = json.loads(admin(helper, "policy", "list", "vpst-alice", "--json").out)
    assert [row["domain"] for row in listing["access"]] == ["stubborn", "web1", "web2"]


def test_audit_shows_and_follows_real_requests(helper: Helper) -> None:
    run("vpst-alice", helper, "status web1")
    shown = admin(helper, "audit", "--user", "vpst-alice", "--json")
    records = [json.loads(line) for line in shown.out.splitlines()]
    assert [(r["action"], r["domain"], r["decision"]) for r in records] == [
        ("status", "web1", "allow")
    ]
    follower = subprocess.Popen(
        [str(BIN / "vpsshell-admin"), "--config", str(helper.config), "audit", "--follow",
         "--user", "vpst-bob", "--lines", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(follower.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        run("vpst-alice", helper, "status web2")
        run("vpst-bob", helper, "status web2")
        wait_until(lambda: lines, 15, "audit --follow never showed bob's request")
        assert "vpst-bob(" in lines[0] and "status" in lines[0] and "deny" in lines[0]
        assert not any("vpst-alice" in line for line in lines)
    finally:
        follower.terminate()
        follower.wait(10)


def test_without_a_running_helper_changes_still_apply(helper: Helper) -> None:
    helper.stop()
    result = admin(helper, "policy", "grant", "user:vpst-bob", "status", "web2")
    assert result.code == 0
    assert "the helper is not running" in result.err
    assert (helper.policy_dir / MANAGED).exists()
    assert admin(helper, "reload").code == 69
    helper.start()
    assert run("vpst-bob", helper, "status web2").code == 0


def test_sessions_lists_none_when_no_console_is_open(helper: Helper) -> None:
    result = admin(helper, "sessions")
    assert (result.code, result.out) == (0, "no console sessions\n")
    assert admin(helper, "kick", "--user", "vpst-alice").code == 1


def test_revoke_ends_a_live_console(helper: Helper) -> None:
    import pexpect

    assert admin(helper, "policy", "grant", "user:vpst-bob", "@operator", "web2").code == 0
    assert run("vpst-bob", helper, "start web2").code == 0
    session = pexpect.spawn(
        "runuser",
        [
            "-u",
            "vpst-bob",
            "--",
            "env",
            f"VPSSHELL_SOCKET={helper.socket}",
            "TERM=xterm",
            str(BIN / "vpsshell"),
            "-c",
            "console web2",
        ],
        timeout=15,
    )
    session.expect("Press Ctrl-] to detach")
    assert admin(helper, "policy", "revoke", "user:vpst-bob", "@operator", "web2").code == 0
    session.expect("access to web2's console ended")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 77
    ended = [r for r in helper.audit() if r["action"] == "console-detach"]
    assert ended and ended[-1]["result"] == "revoked" and ended[-1]["user"] == "vpst-bob"


def test_sessions_shows_who_is_attached_and_how(helper: Helper) -> None:
    from harness import console_as, start_and_wait

    start_and_wait(helper, "vpst-alice", "web1")
    session = console_as(helper, "vpst-alice", "web1", "--no-replay")
    session.expect("Press Ctrl-]")
    wait_until(lambda: helper.admin("sessions") != [], 10, "the session listed")
    result = admin(helper, "sessions")
    assert result.code == 0, result
    header, line = result.out.splitlines()
    assert header.split() == ["ID", "USER", "DOMAIN", "MODE", "VIA", "PID", "SINCE"]
    assert line.split()[1:5] == ["vpst-alice", "web1", "write", "shell"]
    session.send("\x1d")
    session.wait()
