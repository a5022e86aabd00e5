"""Hostile tenants against consoles: a reused domain name, a co-tenant hoarding console slots,
a flood of keystrokes, a writer that dies, and an attach that fails half-way.

Each test attacks a real ``vpsshelld`` as real OS users with hand-written protocol clients (what
a tenant can run instead of ``vpsshell``) and asserts what the victim would notice: another
domain's console log, a console they cannot attach to, a log whose history was pushed out, a
writer slot held by a dead client. The last test runs the helper's own parts in this process,
because the backend failure it needs cannot be provoked from outside.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEFAULT_POLICY, Helper, python_as, run, start_and_wait, state_of, wait_until

from vpsshell import protocol
from vpsshell.daemon.config import Limits

PROMPT = r"root@web1:~\$ "
LOGIN = [
    ["type", "\r"],
    ["expect", "login: "],
    ["type", "root\r"],
    ["expect", "Password: "],
    ["type", "secret\r"],
    ["expect", PROMPT],
]

# A console client as a tenant could write it: attaches (``console`` or ``watch``, no replay)
# and runs STEPS, printing one JSON line per result. Steps: ["type", text] (sent like the
# shell sends a terminal's bytes, 4 KiB per frame), ["expect", regex], ["flood", lines, width]
# (numbered ``echo`` lines typed as fast as the socket takes them, until the guest has run the
# last one), ["flood-forever"] (keeps typing; prints how much the socket took), ["hold"] (until
# stdin closes). At the end it closes the socket without a ``detach``.
CONSOLE_CLIENT = r"""
import json, os, re, select, socket, sys, threading, time
from vpsshell import protocol

path, op, domain, steps = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
printing = threading.Lock()

def say(**what):
    with printing:
        print(json.dumps(what), flush=True)

sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
sock.sendall(protocol.encode_message(protocol.request(1, op, {"domain": domain, "replay": 0})))
frames = protocol.FrameReader()
seen = bytearray()
messages = []
mark = 0

def pump(timeout):
    # select, not a socket timeout: that would make a blocked sendall in another thread fail
    if not select.select([sock], [], [], timeout)[0]:
        return True
    chunk = sock.recv(65536)
    if not chunk:
        return False
    for kind, payload in frames.feed(chunk):
        if kind == protocol.FRAME_CONSOLE_DATA:
            seen.extend(payload)
        else:
            messages.append(json.loads(payload))
    return True

def type_bytes(data):
    for start in range(0, len(data), 4096):
        sock.sendall(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, data[start : start + 4096]))

while not messages and pump(15):
    pass
reply = messages.pop(0) if messages else {}
say(reply=reply, pid=os.getpid())
if not reply.get("ok"):
    sys.exit(1)
for step in steps:
    if step[0] == "type":
        type_bytes(step[1].encode())
    elif step[0] == "expect":
        pattern, deadline = re.compile(step[1].encode()), time.monotonic() + 20
        while not (found := pattern.search(seen, mark)):
            if time.monotonic() > deadline or not pump(0.5):
                say(error=f"never saw {step[1]!r}", tail=seen[-300:].decode(errors="replace"))
                sys.exit(2)
        mark = found.end()
    elif step[0] == "flood":
        count, width = step[1], step[2]
        lines = b"".join(b"echo F%05d-%s\r" % (i, b"x" * width) for i in range(count))
        last = re.compile(b"F%05d-x{%d}\r\n" % (count - 1, width))
        started = time.monotonic()
        typist = threading.Thread(target=type_bytes, args=(lines,), daemon=True)
        typist.start()
        while not last.search(seen, max(mark, len(seen) - 2 * width - 64)):
            if time.monotonic() - started > 120 or not pump(0.5):
                break
        seconds = time.monotonic() - started
        ran = {int(m) for m in re.findall(rb"F(\d{5})-x{%d}\r\n" % width, bytes(seen[mark:]))}
        say(flood={"bytes": len(lines), "seconds": seconds,
                   "missing": sorted(set(range(count)) - ran)[:20]})
        mark = len(seen)
    elif step[0] == "flood-forever":
        def flood():
            sent, line = 0, b"echo " + b"y" * 1000 + b"\r"
            while True:
                type_bytes(line * 16)
                sent += len(line) * 16
                say(sent=sent)
        threading.Thread(target=flood, daemon=True).start()
        while pump(1.0):
            pass
    elif step[0] == "hold":
        say(holding=True)
        sys.stdin.read()
say(done=True)
sock.close()
"""

# Opens COUNT connections and asks OP on DOMAIN on each; prints how many were allowed and the
# refusals, then holds every connection open until stdin closes.
HOARDER = r"""
import json, socket, sys
from vpsshell import protocol

path, op, domain, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
held, refused = [], []
for index in range(count):
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(path)
        sock.sendall(protocol.encode_message(protocol.request(1, op, {"domain": domain})))
        frames, reply = protocol.FrameReader(), None
        sock.settimeout(15)
        while reply is None:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for kind, payload in frames.feed(chunk):
                if kind == protocol.FRAME_MESSAGE and reply is None:
                    reply = json.loads(payload)
    except OSError as exc:
        reply = {"ok": False, "error": {"kind": "connect", "message": str(exc)}}
    if reply and reply.get("ok"):
        held.append(sock)
    else:
        refused.append((reply or {}).get("error", {}).get("message", "connection closed"))
        sock.close()
print(json.dumps({"allowed": len(held), "refused": refused}), flush=True)
sys.stdin.read()
"""


class Client:
    """A hand-written client running as a tenant; its JSON lines are read as they come."""

    def __init__(self, user: str, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            python_as(user, script, *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def next(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the client ended (status {self.process.wait()})"
        return dict(json.loads(line))

    def until(self, key: str) -> dict[str, Any]:
        while True:
            message = self.next()
            assert "error" not in message, message
            if key in message:
                return message

    def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def console_client(helper: Helper, user: str, op: str, domain: str, steps: list[Any]) -> Client:
    return Client(user, CONSOLE_CLIENT, str(helper.socket), op, domain, json.dumps(steps))


def hoard(helper: Helper, user: str, op: str, domain: str, count: int) -> tuple[Client, Any]:
    client = Client(user, HOARDER, str(helper.socket), op, domain, str(count))
    return client, client.next()


def limit_lines(**values: int) -> str:
    """``[limits]`` lines for the keys this helper knows (others tighten connection limits a
    test needs out of the way; an unknown key would stop the helper)."""
    return "\n".join(f"{key} = {value}" for key, value in values.items() if hasattr(Limits, key))


def log_lines(helper: Helper, user: str, domain: str) -> list[str]:
    result = run(user, helper, f"log {domain} --lines=10000 --json")
    assert result.code == 0, result
    return list(result.json()["lines"])


@pytest.fixture
def helpers(open_dir: Path, tenants: None) -> Iterator[list[Helper]]:
    """Helpers a test starts itself (its own config); all stopped at the end."""
    started: list[Helper] = []
    yield started
    for helper in started:
        helper.stop()


# -- a reused name ------------------------------------------------------------------------


def test_a_domain_re_created_under_an_old_name_has_an_empty_console_log(
    open_dir: Path, helpers: list[Helper]
) -> None:
    helper = Helper(open_dir / "reuse")
    helpers.append(helper.start())
    start_and_wait(helper, "vpst-alice", "web1")
    token = "TOKEN-of-the-first-owner-5f3a"
    typist = console_client(
        helper, "vpst-alice", "console", "web1", [*LOGIN, ["type", f"echo {token}\r"]]
    )
    typist.until("done")
    wait_until(
        lambda: any(token in line for line in log_lines(helper, "vpst-alice", "web1")),
        10,
        "the token in the first owner's log",
    )
    helper.stop()
    # the admin re-creates web1 as a new domain (a new UUID) and gives it to bob; a console
    # log kept by name, as earlier versions did, is still in the log directory
    helper.config.write_text(
        helper.config.read_text().replace(
            'name = "web1"\n', 'name = "web1"\nuuid = "2f0c9a4e-7d1b-4c55-9e1e-5a0d6c3b7e21"\n', 1
        )
    )
    with (helper.root / "console" / "web1.log").open("ab") as legacy:
        legacy.write(b"LEGACY-per-name-log-line\r\n")
    helper.write_policy("10-tenants.policy", "allow user:vpst-bob @operator web1\n")
    helper.start()
    if state_of(helper, "vpst-bob", "web1") != "running":
        start_and_wait(helper, "vpst-bob", "web1")
    # bob's log is not empty (his domain's boot), so what is missing from it is really missing
    lines = wait_until(
        lambda: [ls for ls in [log_lines(helper, "vpst-bob", "web1")] if ls],
        10,
        "the new web1's own console output in its log",
    )[0]
    assert not [line for line in lines if token in line or "LEGACY" in line]


# -- console slots ------------------------------------------------------------------------


def test_a_co_tenant_cannot_take_every_console_slot_of_a_shared_domain(
    open_dir: Path, helpers: list[Helper]
) -> None:
    """carol and alice share db1; carol opens 70 watch sessions on it (more connections than
    she would normally get, so only the console limits stand in her way)."""
    helper = Helper(
        open_dir / "slots",
        policy=DEFAULT_POLICY + "allow user:vpst-alice @operator db1\n",
        extra_limits=limit_lines(max_connections_per_user=200, connections_burst=200),
    )
    helpers.append(helper.start())
    hoarder, result = hoard(helper, "vpst-carol", "watch", "db1", 70)
    try:
        per_user = Limits().console_watchers_per_user
        assert result["allowed"] == per_user, result["refused"][:3]
        assert all("already watch" in text for text in result["refused"]), result["refused"][:3]
        for op in ("console", "watch"):
            alice = console_client(helper, "vpst-alice", op, "db1", [])
            assert alice.next()["reply"]["ok"] is True, op
            assert alice.close() == 0
    finally:
        hoarder.close()


def test_watchers_are_bounded_per_domain_and_never_take_the_writers_slot(
    open_dir: Path, helpers: list[Helper]
) -> None:
    helper = Helper(
        open_dir / "full",
        policy=DEFAULT_POLICY + "allow user:vpst-alice @operator db1\n",
        extra_limits="console_watchers_per_domain = 6\n",
    )
    helpers.append(helper.start())
    carols, carol = hoard(helper, "vpst-carol", "watch", "db1", 4)
    alices, alice = hoard(helper, "vpst-alice", "watch", "db1", 3)
    try:
        assert (carol["allowed"], alice["allowed"]) == (4, 2)
        assert "too many sessions watch" in alice["refused"][0]
        writers, writer = hoard(helper, "vpst-carol", "console", "db1", 1)
        assert writer["allowed"] == 1, writer
        writers.close()
    finally:
        carols.close()
        alices.close()


# -- a flood of keystrokes ----------------------------------------------------------------


def test_a_flood_of_keystrokes_is_slowed_not_lost_and_keeps_the_history(
    open_dir: Path, helpers: list[Helper]
) -> None:
    """alice types ~200 KB as fast as her socket takes it, into a guest that echoes it all
    (twice: the typed line, then echo's output). The log holds 4 x 16 KiB: without a limit the
    flood's echo would push all of it out, including what came before the flood."""
    helper = Helper(
        open_dir / "flood", extra_limits="console_log_bytes = 16384\nconsole_log_files = 4\n"
    )
    helpers.append(helper.start())
    start_and_wait(helper, "vpst-alice", "web1")
    before = "HISTORY-from-before-the-flood"
    flooder = console_client(
        helper,
        "vpst-alice",
        "console",
        "web1",
        [*LOGIN, ["type", f"echo {before}\r"], ["expect", f"\n{before}\r\n"], ["flood", 200, 1000]],
    )
    flood = flooder.until("flood")["flood"]
    flooder.until("done")
    assert flood["missing"] == []  # every keystroke reached the guest, none was dropped
    limits = Limits()
    # what the helper may have passed on by the time the guest ran the last line: the burst,
    # the sustained rate, one 4 KiB frame of debt and the few bytes of the login
    allowed = (
        limits.console_input_burst_bytes
        + limits.console_input_bytes_per_second * flood["seconds"]
        + 4096
        + 1024
    )
    assert flood["bytes"] <= allowed, f"{flood['bytes']} bytes typed in {flood['seconds']:.2f} s"

    def logged() -> list[str] | None:
        run("vpst-alice", helper, "sysrq web1 m")  # a little output after the flood
        lines = log_lines(helper, "vpst-alice", "web1")
        return lines if any("sysrq: Show Memory" in line for line in lines) else None

    lines = wait_until(logged, 20, "output after the flood logged again", interval=1.0)
    assert any(before in line for line in lines), "the flood pushed the history out of the log"
    assert any("bytes of console output not logged" in line for line in lines)


# -- a writer that dies -------------------------------------------------------------------


def attach_as_writer(helper: Helper, user: str, domain: str) -> bool:
    client, result = hoard(helper, user, "console", domain, 1)
    client.close()
    return bool(result["allowed"] == 1)


def test_a_writer_killed_frees_the_writer_slot_at_once(
    open_dir: Path, helpers: list[Helper]
) -> None:
    helper = Helper(open_dir / "killed")
    helpers.append(helper.start())
    holder = console_client(helper, "vpst-alice", "console", "web1", [["hold"]])
    pid = holder.next()["pid"]
    holder.until("holding")
    assert not attach_as_writer(helper, "vpst-alice", "web1")  # the slot is taken
    os.kill(pid, signal.SIGKILL)
    holder.kill()
    wait_until(lambda: attach_as_writer(helper, "vpst-alice", "web1"), 5, "the slot freed")
    reasons = [e.get("result") for e in helper.audit() if e["action"] == "console-detach"]
    assert "disconnected" in reasons


def test_a_flooding_writer_killed_frees_the_slot_without_its_backlog_being_typed(
    open_dir: Path, helpers: list[Helper]
) -> None:
    """The dead client left far more in its socket than the input rate lets through in
    seconds: the helper notices the hangup while it waits, instead of typing it all first.
    web1 is shut off, so nothing is echoed: no write to the dead socket gives it away."""
    helper = Helper(open_dir / "killed-flooding")
    helpers.append(helper.start())
    flooder = console_client(helper, "vpst-alice", "console", "web1", [["flood-forever"]])
    pid = flooder.next()["pid"]
    backlog = 2 * Limits().console_input_burst_bytes + 256 * 1024
    while flooder.until("sent")["sent"] < backlog:
        pass
    os.kill(pid, signal.SIGKILL)
    flooder.kill()
    wait_until(lambda: attach_as_writer(helper, "vpst-alice", "web1"), 5, "the slot freed")


# -- an attach that fails half-way --------------------------------------------------------


def test_an_attach_whose_state_lookup_fails_leaves_no_writer_behind(tmp_path: Path) -> None:
    """The domain's state is read for the reply; if that fails (a host lost, a domain gone
    in between), the request fails, and must not leave its attachment holding the slot."""
    if os.geteuid() != 0:
        pytest.skip("the helper in this process identifies its caller as root")
    from vpsshell.daemon.assembly import start_helper
    from vpsshell.daemon.config import parse_config
    from vpsshell.errors import TemporaryFailure

    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-root.policy").write_text("allow user:root console web1\n")
    config = parse_config(
        {
            "socket": str(tmp_path / "tenant.sock"),
            "socket_group": "root",
            "admin_socket": str(tmp_path / "admin.sock"),
            "policy_dir": str(policy_dir),
            "audit_log": str(tmp_path / "audit.jsonl"),
            "state_dir": str(tmp_path / "state"),
            "console_log_dir": str(tmp_path / "console"),
            "hooks_dir": str(tmp_path / "hooks.d"),
            "pam_service": "",
            "backend": {
                "type": "sim",
                "domains": [{"name": "web1", "vcpus": 1, "memory_mib": 128, "boot_seconds": 0}],
            },
        }
    )

    async def attach(socket_path: str) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        writer.write(protocol.encode_message(protocol.request(1, "console", {"domain": "web1"})))
        header = await reader.readexactly(protocol.HEADER.size)
        _, length = protocol.parse_header(header)
        reply = protocol.decode_message(await reader.readexactly(length))
        writer.close()
        return reply

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        helper = await start_helper(config)
        try:
            backend_info = helper.backend.info
            calls = 0

            async def info_failing_once(uuid: str) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise TemporaryFailure("the host of web1 does not answer")
                return await backend_info(uuid)

            helper.backend.info = info_failing_once  # type: ignore[method-assign]
            failed = await attach(config.socket)
            again = await attach(config.socket)
            return failed, again
        finally:
            await helper.stop()

    failed, again = asyncio.run(scenario())
    assert failed["ok"] is False and failed["error"]["kind"] == "temporary"
    assert again["ok"] is True, again["error"]["message"]
