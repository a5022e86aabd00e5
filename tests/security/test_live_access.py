"""Access that ends while a tenant is connected ends for that connection too.

A connection, or an attached console, used to keep the groups, account state and rules of the
moment it opened: after ``gpasswd -d`` the same connection still started a group-granted
domain, a console kept taking keystrokes after its group was removed, after its rule's
``expires=`` day ended, and after ``chage -E 0``. Each is attacked here as it was found, with
the helper re-checking sessions every second (``session_recheck_seconds``,
``account_recheck_seconds``).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from harness import (
    BIN,
    DEFAULT_POLICY,
    TEAM_GROUP,
    Helper,
    console_as,
    run,
    start_and_wait,
    wait_until,
)
from rawclient import OneConnection, request

pytestmark = pytest.mark.root

RECHECK_EVERY_SECOND = "session_recheck_seconds = 1\naccount_recheck_seconds = 1"


@pytest.fixture
def rechecking(open_dir: Path, tenants: None) -> Iterator[Helper]:
    running = Helper(open_dir / "helper", extra_limits=RECHECK_EVERY_SECOND).start()
    yield running
    running.stop()


@pytest.fixture
def carol_in_team() -> Iterator[None]:
    yield
    subprocess.run(["usermod", "-aG", TEAM_GROUP, "vpst-carol"], check=True)


@pytest.fixture
def alice_account_restored() -> Iterator[None]:
    yield
    subprocess.run(["chage", "-E", "-1", "vpst-alice"], check=True)


def test_a_group_removed_mid_connection_takes_its_grants_along(
    rechecking: Helper, carol_in_team: None
) -> None:
    connection = OneConnection("vpst-carol", str(rechecking.socket))
    try:
        who = connection.ask(request("whoami"))
        assert who is not None and TEAM_GROUP in who["result"]["groups"]
        assert (connection.ask(request("status", domain="db1")) or {}).get("ok")
        subprocess.run(["gpasswd", "-d", "vpst-carol", TEAM_GROUP], check=True)

        def group_gone() -> bool:  # groups are looked up per request, cached for a second
            who = connection.ask(request("whoami"))
            return who is not None and TEAM_GROUP not in who["result"]["groups"]

        wait_until(group_gone, 10, "the connection kept the group it opened with")
        start = connection.ask(request("start", domain="db1"))
        assert start is not None and start["error"]["kind"] == "denied"
    finally:
        connection.close()
    assert run("vpst-alice", rechecking, "status db1").code == 77  # never started


def test_a_console_granted_by_a_removed_group_is_detached(
    rechecking: Helper, carol_in_team: None
) -> None:
    start_and_wait(rechecking, "vpst-carol", "db1")
    session = console_as(rechecking, "vpst-carol", "db1")
    session.expect("Press Ctrl-]")
    subprocess.run(["gpasswd", "-d", "vpst-carol", TEAM_GROUP], check=True)
    session.expect("access to db1", timeout=15)
    session.expect(pexpect.EOF)
    session.close()
    assert session.exitstatus == 77


def test_an_expired_account_loses_its_console_and_its_connection(
    rechecking: Helper, alice_account_restored: None
) -> None:
    start_and_wait(rechecking, "vpst-alice", "web1")
    session = console_as(rechecking, "vpst-alice", "web1")
    session.expect("Press Ctrl-]")
    connection = OneConnection("vpst-alice", str(rechecking.socket))
    try:
        assert (connection.ask(request("status", domain="web1")) or {}).get("ok")
        subprocess.run(["chage", "-E", "0", "vpst-alice"], check=True)
        session.expect("access to web1", timeout=15)
        session.expect(pexpect.EOF)
        session.close()

        def refused() -> bool:
            reply = connection.ask(request("status", domain="web1"))
            return reply is None or reply.get("error", {}).get("kind") == "denied"

        wait_until(refused, 15, "the open connection still works after chage -E 0")
    finally:
        connection.close()


def test_a_console_ends_when_its_rule_expires_at_midnight(open_dir: Path, tenants: None) -> None:
    """The helper runs under faketime, ten seconds before midnight, with a rule that ends today."""
    today = dt.date.today()
    policy = DEFAULT_POLICY.replace(
        "allow user:vpst-alice  @operator web1 web2 stubborn",
        f"allow user:vpst-alice  @operator web1 expires={today.isoformat()}",
    )
    helper = Helper(open_dir / "helper", policy=policy)
    helper.start(wrapper=("faketime", f"{today.isoformat()} 23:59:50"))
    try:
        start_and_wait(helper, "vpst-alice", "web1")
        session = console_as(helper, "vpst-alice", "web1")
        session.expect("Press Ctrl-]")
        session.expect("access to web1", timeout=30)  # at the helper's midnight
        session.expect(pexpect.EOF)
        session.close()
        assert session.exitstatus == 77
        assert run("vpst-alice", helper, "log web1").code == 77
    finally:
        helper.stop()


def follow_as(helper: Helper, user: str, line: str) -> subprocess.Popen[str]:
    """The real ``vpsshell -c 'events ... --follow'`` as ``user``, output on a pipe."""
    return subprocess.Popen(
        ["runuser", "-u", user, "--", "env", f"VPSSHELL_SOCKET={helper.socket}"]
        + [str(BIN / "vpsshell"), "-c", line],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def following(helper: Helper, user: str) -> bool:
    """Whether ``user``'s ``events --follow`` request was allowed (its session runs now)."""
    return any(
        r.get("user") == user and r.get("action") == "events" and r.get("follow")
        for r in helper.audit()
        if r.get("decision") == "allow"
    )


def test_a_quiet_events_follower_loses_a_removed_groups_domain(
    rechecking: Helper, carol_in_team: None
) -> None:
    follower = follow_as(rechecking, "vpst-carol", "events db1 --follow --lines=0")
    try:
        wait_until(lambda: following(rechecking, "vpst-carol"), 10, "the follow never started")
        subprocess.run(["gpasswd", "-d", "vpst-carol", TEAM_GROUP], check=True)
        _, err = follower.communicate(timeout=30)  # nothing happens to db1 meanwhile
        assert follower.returncode == 77 and "db1" in err
    finally:
        if follower.poll() is None:
            follower.kill()


def test_a_quiet_events_follower_ends_with_its_account(
    rechecking: Helper, alice_account_restored: None
) -> None:
    follower = follow_as(rechecking, "vpst-alice", "events --follow --lines=0")
    try:
        wait_until(lambda: following(rechecking, "vpst-alice"), 10, "the follow never started")
        subprocess.run(["chage", "-E", "0", "vpst-alice"], check=True)
        _, err = follower.communicate(timeout=30)
        assert follower.returncode == 77 and "account" in err
    finally:
        if follower.poll() is None:
            follower.kill()
