"""Hostile tenants against the helper's events and hooks, as real users on real sockets.

- A domain name the administrator gives to another domain (undefined, re-created with a new
  UUID, granted to another tenant) shows the new tenant none of the old domain's events, nor
  who used its console; a renamed domain keeps its own events, an undefined one shows none.
- A tenant looping ``console --takeover`` and provoking refusals never keeps a ``crashed`` of
  another tenant's domain, nor that tenant's own console events, from the admin's hooks.
- ``confirm=password`` on ``status`` and ``events`` holds for ``list`` and for ``events``
  without a domain: those show such a domain by name only, and leave its events out.

The name-reuse tests run the helper's real assembly in this process on libvirt's
``test:///default`` driver (its domains are shared by every connection of one process), so
the test can undefine, re-create and rename domains under the running helper as an
administrator would; tenants still come in as real users through the real ``vpsshell``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness import (
    BIN,
    DEFAULT_POLICY,
    Helper,
    libvirt_backend,
    python_as,
    run,
    start_and_wait,
    wait_until,
)

# -- helpers --------------------------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def on_a_pty(helper: Helper, user: str, line: str) -> pexpect.spawn:
    """``vpsshell -c LINE`` as ``user`` on a pty (``ssh -t host LINE``)."""
    return pexpect.spawn(
        "runuser",
        ["-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", f"VPSSHELL_SOCKET={helper.socket}"]
        + [str(BIN / "vpsshell"), "-c", line],
        timeout=20,
        encoding="utf-8",
    )


def finish(session: pexpect.spawn) -> tuple[int, str]:
    session.expect(pexpect.EOF)
    output = session.before or ""
    session.close()
    return int(session.exitstatus), output


WATCH_AND_LEAVE = """\
import socket, sys
from vpsshell import protocol
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(protocol.encode_message(protocol.request(1, "watch", {"domain": sys.argv[2]})))
reader = protocol.FrameReader()
while True:
    frames = reader.feed(s.recv(65536))
    replies = [f for t, f in frames if t == protocol.FRAME_MESSAGE]
    if replies:
        reply = protocol.decode_message(replies[0])
        assert reply.get("ok"), reply
        break
s.close()
"""


def watch_and_leave(helper: Helper, user: str, domain: str) -> None:
    """Attach to ``domain``'s console read-only, then leave: two console events by ``user``."""
    subprocess.run(
        python_as(user, WATCH_AND_LEAVE, str(helper.socket), domain), check=True, timeout=30
    )


# -- a reused name (libvirt test driver, helper assembled in this process) -------------------

try:
    import libvirt
except ImportError:  # the name-reuse tests skip; the others need no libvirt
    libvirt = None


class HelperInProcess:
    """The helper's real assembly (``start_helper``) on its own event loop thread."""

    def __init__(self, helper: Helper) -> None:
        self.helper = helper
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: Any = None

    def __enter__(self) -> HelperInProcess:
        from vpsshell.daemon.assembly import start_helper
        from vpsshell.daemon.config import load_config

        self.thread.start()
        config = load_config(str(self.helper.config))
        future = asyncio.run_coroutine_threadsafe(start_helper(config), self.loop)
        self.running = future.result(30)
        os.chmod(self.helper.socket, 0o666)  # tenants outside the socket group, as in harness
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def define(conn: Any, name: str, domain_uuid: str) -> Any:
    return conn.defineXML(
        f"<domain type='test'><name>{name}</name><uuid>{domain_uuid}</uuid>"
        "<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


def remove(conn: Any, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


@pytest.fixture
def test_driver() -> Iterator[tuple[Any, str]]:
    """The process's ``test:///default`` driver and a name prefix no other test uses."""
    if libvirt is None:
        pytest.skip("libvirt-python is not installed")
    conn = libvirt.open("test:///default")
    prefix = f"sec{uuid.uuid4().hex[:6]}"
    yield conn, prefix
    for dom in conn.listAllDomains():
        if dom.name().startswith(prefix):
            remove(conn, dom.name())
    conn.close()


def libvirt_helper(root: Path, policy: str) -> Helper:
    helper = Helper(root, policy=policy)
    helper.set_backend(libvirt_backend([("node1", "test:///default")]))
    return helper


def events_of(helper: Helper, user: str, line: str) -> list[dict[str, Any]]:
    result = run(user, helper, line)
    assert result.code == 0, result
    return json_lines(result.out)


def test_a_reused_name_shows_none_of_the_previous_domains_events(
    open_dir: Path, tenants: None, test_driver: tuple[Any, str]
) -> None:
    conn, prefix = test_driver
    name, old, new = f"{prefix}-web", str(uuid.uuid4()), str(uuid.uuid4())
    define(conn, name, old)
    helper = libvirt_helper(open_dir / "helper", f"allow user:vpst-alice @operator {name}\n")
    with HelperInProcess(helper):
        # the first owner uses the domain: lifecycle events and console events with her name
        assert run("vpst-alice", helper, f"start {name}").code == 0
        watch_and_leave(helper, "vpst-alice", name)
        wait_until(
            lambda: (
                [e["kind"] for e in events_of(helper, "vpst-alice", f"events {name} --json")]
                == ["started", "console-attached", "console-detached"]
            ),
            15,
            "alice's events kept",
        )
        # the administrator re-creates the name for another tenant
        remove(conn, name)
        define(conn, name, new)
        helper.write_policy("10-tenants.policy", f"allow user:vpst-carol @operator {name}\n")
        helper.admin("reload")
        for line in (f"events {name} --json", "events --json"):
            result = run("vpst-carol", helper, line)
            assert (result.code, result.out) == (0, ""), result
        assert run("vpst-carol", helper, f"start {name}").code == 0
        shown = wait_until(
            lambda: events_of(helper, "vpst-carol", f"events {name} --json"), 15, "started"
        )
        assert [(e["kind"], e["uuid"]) for e in shown] == [("started", new)]
        assert events_of(helper, "vpst-carol", "events --json") == shown
        # even the first owner, granted the name again, sees only what the new domain did
        helper.write_policy("10-tenants.policy", f"allow user:vpst-alice events {name}\n")
        helper.admin("reload")
        assert [e["uuid"] for e in events_of(helper, "vpst-alice", "events --json")] == [new]


def test_a_renamed_domain_keeps_its_events_and_an_undefined_one_shows_none(
    open_dir: Path, tenants: None, test_driver: tuple[Any, str]
) -> None:
    conn, prefix = test_driver
    first, renamed, gone = f"{prefix}-a", f"{prefix}-b", f"{prefix}-gone"
    first_uuid, gone_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    dom = define(conn, first, first_uuid)
    define(conn, gone, gone_uuid)
    policy = f"allow user:vpst-alice @operator {first} {renamed} {gone}\n"
    helper = libvirt_helper(open_dir / "helper", policy)
    with HelperInProcess(helper):
        for name in (first, gone):
            assert run("vpst-alice", helper, f"start {name}").code == 0
        wait_until(
            lambda: len(events_of(helper, "vpst-alice", "events --json")) == 2, 15, "2 started"
        )
        assert run("vpst-alice", helper, f"poweroff {first}").code == 0
        wait_until(
            lambda: len(events_of(helper, "vpst-alice", f"events {first} --json")) == 2,
            15,
            "stopped",
        )
        dom.rename(renamed)
        remove(conn, gone)
        kept = events_of(helper, "vpst-alice", f"events {renamed} --json")
        assert [(e["kind"], e["domain"], e["uuid"]) for e in kept] == [
            ("started", first, first_uuid),
            ("stopped", first, first_uuid),
        ]
        everything = events_of(helper, "vpst-alice", "events --json")
        assert [e["uuid"] for e in everything if e["kind"] != "stopped"] == [first_uuid]
        assert gone_uuid not in json.dumps(everything)


# -- the admin's hooks under a flood (sim backend, real helper process) ----------------------

FLOOD = """\
import socket, sys
from vpsshell import protocol
path, refusals, takeovers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def replies(s, count):
    reader, got = protocol.FrameReader(), 0
    while got < count:
        chunk = s.recv(65536)
        assert chunk, "the helper closed the connection"
        got += sum(t == protocol.FRAME_MESSAGE for t, _ in reader.feed(chunk))

s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b"".join(
    protocol.encode_message(protocol.request(i + 1, "start", {"domain": "db1"}))
    for i in range(refusals)
))
replies(s, refusals)
s.close()
previous = None
for i in range(takeovers):
    c = socket.socket(socket.AF_UNIX)
    c.connect(path)
    args = {"domain": "web1", "takeover": True, "replay": 0}
    c.sendall(protocol.encode_message(protocol.request(1, "console", args)))
    replies(c, 1)
    if previous is not None:
        previous.close()
    previous = c
previous.close()
"""


def install_recorder(helper: Helper, out: Path) -> None:
    """A hook that appends each event's JSON to ``out`` and takes its time over tenants'."""
    helper.hooks_dir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(helper.hooks_dir, 0o755)
    hook = helper.hooks_dir / "50-record"
    hook.write_text(
        f'#!/bin/sh\ncat >> {out}\ncase "$VPSSHELL_EVENT" in console-*|denied) sleep 0.05 ;; esac\n'
    )
    os.chmod(hook, 0o755)


def hooked(out: Path) -> list[dict[str, Any]]:
    return json_lines(out.read_text()) if out.exists() else []


def test_a_tenants_flood_never_keeps_a_crash_or_another_tenants_events_from_the_hooks(
    open_dir: Path, tenants: None
) -> None:
    out = open_dir / "hooked.jsonl"
    helper = Helper(open_dir / "helper", extra_limits="hook_timeout_seconds = 4")
    install_recorder(helper, out)
    helper.start()
    try:
        start_and_wait(helper, "vpst-carol", "db1")
        start_and_wait(helper, "vpst-alice", "web1")
        # alice: 1500 refusals (start db1, carol's) and 60 console takeovers of her own web1
        subprocess.run(
            python_as("vpst-alice", FLOOD, str(helper.socket), "1500", "60"),
            check=True,
            timeout=120,
        )
        watch_and_leave(helper, "vpst-carol", "db1")
        helper.admin("crash", domain="db1")
        wait_until(
            lambda: any((e["kind"], e["domain"]) == ("crashed", "db1") for e in hooked(out)),
            20,
            "the hook got db1's crash",
        )
        wait_until(
            lambda: any(
                (e["kind"], e["user"]) == ("console-attached", "vpst-carol") for e in hooked(out)
            ),
            30,
            "the hook got carol's console-attached",
        )

        def alice_after_carol() -> int:
            seen = [(e["kind"], e["user"]) for e in hooked(out)]
            carol = seen.index(("console-attached", "vpst-carol"))
            return sum(user == "vpst-alice" for _, user in seen[carol:])

        # carol's event did not wait for alice's backlog: the hook ran it, then most of hers
        wait_until(lambda: alice_after_carol() >= 50, 30, "alice's backlog ran after carol's")
        by_alice = [e for e in hooked(out) if e["user"] == "vpst-alice"]
        assert len(by_alice) < 1500  # the flood was real: most of alice's own events dropped
        assert "dropped for hooks" in helper.log.read_text()
    finally:
        helper.stop()


# -- confirm=password on status and events, seen through list and events --------------------

PASSWORD = "correct-horse-7"  # as in the PAM tests: the same user, the same password
GUARDED_POLICY = DEFAULT_POLICY + (
    "allow user:vpst-carol start web3\nallow user:vpst-carol @viewer web3 confirm=password\n"
)


def with_password(helper: Helper, user: str, line: str) -> tuple[int, str]:
    session = on_a_pty(helper, user, line)
    session.expect("needs your password. Password: ")
    session.sendline(PASSWORD)
    return finish(session)


def test_confirm_password_holds_for_list_and_events_without_a_domain(helper: Helper) -> None:
    subprocess.run(["chpasswd"], input=f"vpst-carol:{PASSWORD}\n", text=True, check=True)
    helper.write_policy("10-tenants.policy", GUARDED_POLICY)
    helper.admin("reload")
    start_and_wait(helper, "vpst-carol", "db1")
    assert run("vpst-carol", helper, "start web3").code == 0
    wait_until(
        lambda: '"running"' in with_password(helper, "vpst-carol", "status web3 --json")[1],
        15,
        "web3 running",
    )
    # list: web3 by name only, nothing of what status would have asked a password for
    listed = run("vpst-carol", helper, "list --json")
    assert listed.code == 0, listed
    by_name = {domain["name"]: domain for domain in listed.json()}
    assert by_name["web3"] == {"name": "web3", "confirm": "password"}
    assert by_name["db1"]["state"] == "running"
    table = run("vpst-carol", helper, "list").out.splitlines()
    assert [row.split() for row in table if row.startswith("web3 ")] == [["web3"] + ["-"] * 5]
    assert table[-1] == "web3: details need your password ('status web3' asks)"
    # events without a domain: db1's, none of web3's, and it says so
    everything = run("vpst-carol", helper, "events --json")
    assert everything.code == 0, everything
    assert {e["domain"] for e in json_lines(everything.out)} == {"db1"}
    assert "events of web3 left out: they need your password ('events web3' asks)" in (
        everything.err
    )
    # events web3: asks for the password, then shows them
    asked = run("vpst-carol", helper, "events web3")
    assert asked.code == 77 and "needs your password" in asked.err, asked
    code, output = with_password(helper, "vpst-carol", "events web3 --json")
    assert code == 0
    assert [e["kind"] for e in json_lines(output)] == ["started"]
    # following everything: web3's events stay out, db1's come
    session = on_a_pty(helper, "vpst-carol", "events --follow --lines=0 --json")
    session.expect(r"left out: [^\r\n]*\r\n")
    helper.admin("crash", domain="web3")
    assert run("vpst-carol", helper, "shutdown db1").code == 0
    session.expect(r'\{[^\r\n]*"domain": "db1"[^\r\n]*\}\r\n')
    assert json.loads(session.after)["kind"] == "shutdown"
    assert "web3" not in (session.before or "")
    session.sendcontrol("c")
    assert finish(session)[0] == 0
