"""PAM through the helper: expired accounts are refused at connect; confirm=password asks for
the tenant's real password on a real pty, refuses a wrong one, and locks out after repeats."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pexpect
import pytest
from harness import BIN, DEFAULT_POLICY, Helper, run, start_and_wait

PASSWORD = "correct-horse-7"
CONFIRM_POLICY = DEFAULT_POLICY + (
    "allow user:vpst-carol start web3\nallow user:vpst-carol poweroff web3 confirm=password\n"
)


@pytest.fixture
def confirming(helper: Helper) -> Iterator[Helper]:
    subprocess.run(["chpasswd"], input=f"vpst-carol:{PASSWORD}\n", text=True, check=True)
    helper.write_policy("10-tenants.policy", CONFIRM_POLICY)
    helper.admin("reload")
    start_and_wait(helper, "vpst-carol", "web3")
    yield helper


def poweroff_on_a_pty(helper: Helper) -> pexpect.spawn:
    return pexpect.spawn(
        "runuser",
        [
            "-u",
            "vpst-carol",
            "--",
            "env",
            f"VPSSHELL_SOCKET={helper.socket}",
            str(BIN / "vpsshell"),
            "-c",
            "poweroff web3",
        ],
        timeout=20,
    )


def test_expired_account_is_refused_at_connect(helper: Helper) -> None:
    subprocess.run(["usermod", "-e", "1", "vpst-bob"], check=True)
    try:
        result = run("vpst-bob", helper, "list")
        assert result.code == 77 and "may not use vpsshell" in result.err
        refused = [
            e for e in helper.audit() if e.get("user") == "vpst-bob" and e["action"] == "connect"
        ]
        assert refused and refused[-1]["decision"] == "deny"
    finally:
        subprocess.run(["usermod", "-e", "", "vpst-bob"], check=True)
    assert run("vpst-bob", helper, "list").code == 0


def test_confirm_password_right_after_wrong(confirming: Helper) -> None:
    session = poweroff_on_a_pty(confirming)
    session.expect("needs your password. Password: ")
    session.sendline("not-the-password")
    session.expect("password not accepted. Password: ")
    session.sendline(PASSWORD)
    session.expect("web3: powered off")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0
    assert PASSWORD not in confirming.audit_log.read_text()
    lines = [e for e in confirming.audit() if e.get("action") == "poweroff"]
    assert [e.get("decision") for e in lines][-2:] == ["deny", "allow"]
    assert lines[-1].get("confirmed") is True


def test_confirm_password_needs_a_terminal(confirming: Helper) -> None:
    result = run("vpst-carol", confirming, "poweroff web3")
    assert result.code == 77 and "ssh -t" in result.err
    assert run("vpst-carol", confirming, "status web3 --json").json()["state"] == "running"


def test_repeated_wrong_passwords_lock_out(confirming: Helper) -> None:
    session = poweroff_on_a_pty(confirming)
    for _ in range(3):
        session.expect("Password: ")
        session.sendline("wrong")
    session.expect("too many wrong passwords")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 75
    again = poweroff_on_a_pty(confirming)
    again.expect("too many wrong passwords")  # locked: not even asked
    again.expect(pexpect.EOF)
    assert run("vpst-carol", confirming, "status web3 --json").json()["state"] == "running"


def test_confirm_password_guards_the_console_too(confirming: Helper) -> None:
    """A console session is an action like any other: with confirm=password it asks, then
    attaches (it used to end with 77 without asking)."""
    confirming.write_policy(
        "10-tenants.policy",
        CONFIRM_POLICY + "allow user:vpst-carol console web3 confirm=password\n",
    )
    confirming.admin("reload")
    session = pexpect.spawn(
        "runuser",
        [
            "-u",
            "vpst-carol",
            "--",
            "env",
            f"VPSSHELL_SOCKET={confirming.socket}",
            str(BIN / "vpsshell"),
            "-c",
            "console web3",
        ],
        timeout=20,
    )
    session.expect("needs your password. Password: ")
    session.sendline(PASSWORD)
    session.expect("Connected to the console of web3")
    session.sendcontrol("]")
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 0
    consoles = [e for e in confirming.audit() if e.get("action") == "console"]
    assert consoles[-1].get("confirmed") is True
