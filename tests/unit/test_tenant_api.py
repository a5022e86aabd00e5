"""The tenant API and its listener, in this process, for any developer: no root, no PAM.

A whole helper is assembled by ``start_helper`` (the wiring ``vpsshelld`` runs) on the sim
backend, with its sockets, policy, audit log and state in a temp dir and ``pam_service = ""``;
the tenant is the user running the tests, named in the policy by its own name, and requests go
over the real Unix socket as a hand-written client frames them. Each test follows one branch
of the request path (rate limit, sanitize, authorize, the audit log's fail-closed check, act,
reply and session, audit line) or of the listener, and asserts what the tenant is answered and
what the audit log and the domain show. Backend calls are replaced only where a test needs the
backend to hang, fail or wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from vpsshell import protocol
from vpsshell.daemon.assembly import RunningHelper, start_helper
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.config import Limits, parse_config
from vpsshell.daemon.events import Event
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.server import Answer, Listener, bind_socket

try:
    ME = pwd.getpwuid(os.geteuid()).pw_name
    MY_GROUP = grp.getgrgid(os.getegid()).gr_name
except KeyError:  # a uid without a passwd entry (some containers): no tenant to be
    pytest.skip("the current uid has no user name", allow_module_level=True)

POLICY_FILE = "10-test.policy"
POLICY = f"""\
allow user:{ME} @operator web1 web2
allow user:{ME} sysrq     web1
allow user:{ME} status    locked confirm=password
"""
DOMAINS = ("web1", "web2", "locked", "other")  # "other" exists and is nobody's
TEST_SECONDS = 30  # a scenario that takes longer is stuck


# -- a helper in this process and a raw client -------------------------------------------------


class Client:
    """One connection to a socket, speaking the protocol frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_id = 0

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(protocol.encode_message(message))
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        header = await self.reader.readexactly(protocol.HEADER.size)
        frame_type, length = protocol.parse_header(header)
        return frame_type, await self.reader.readexactly(length)

    async def message(self) -> dict[str, Any]:
        """The next message, skipping console data."""
        while True:
            frame_type, payload = await self.frame()
            if frame_type == protocol.FRAME_MESSAGE:
                return protocol.decode_message(payload)

    async def request(self, op: str, **args: Any) -> int:
        self.next_id += 1
        await self.send(protocol.request(self.next_id, op, args))
        return self.next_id

    async def reply(self) -> dict[str, Any]:
        """The next final reply (progress messages are skipped)."""
        while "progress" in (message := await self.message()):
            pass
        return message

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        request_id = await self.request(op, **args)
        reply = await self.reply()
        assert reply["id"] == request_id, reply
        return reply

    async def closed_by_peer(self) -> bool:
        try:
            return await self.reader.read(1) == b""
        except ConnectionError:  # closed with our request unread, or before we could send it
            return True

    def close(self) -> None:
        self.writer.close()


def result_of(reply: dict[str, Any]) -> Any:
    assert reply["ok"] is True, reply
    return reply["result"]


def error_of(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False, reply
    return reply["error"]["kind"], reply["error"]["message"]


@dataclass
class Site:
    root: Path
    helper: RunningHelper
    socket: str
    admin_socket: str
    events: list[Event]
    clients: list[Client] = field(default_factory=list)

    async def connect(self, path: str | None = None) -> Client:
        reader, writer = await asyncio.open_unix_connection(path or self.socket)
        self.clients.append(Client(reader, writer))
        return self.clients[-1]

    def audit(self) -> list[dict[str, Any]]:
        text = (self.root / "audit.jsonl").read_text()
        # a record after a failed write starts on a line of its own: skip the empty one
        return [json.loads(line) for line in text.splitlines() if line]

    def requests(self, action: str) -> list[dict[str, Any]]:
        """Audit lines of tenant requests for ``action``."""
        return [r for r in self.audit() if r.get("action") == action and "socket" not in r]

    def write_policy(self, text: str) -> None:
        policy_dir = self.root / "policy.d"
        new = policy_dir / f".{POLICY_FILE}.new"
        new.write_text(text)
        os.chmod(new, 0o644)
        os.replace(new, policy_dir / POLICY_FILE)

    async def state(self, domain: str) -> str:
        return str((await self.helper.backend.lookup(domain)).state.value)  # type: ignore[union-attr]

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        async with asyncio.timeout(10):
            while not await check():
                await asyncio.sleep(0.02)  # polling a condition, not waiting for time to pass
        assert await check(), what


@asynccontextmanager
async def running(root: Path, policy: str, limits: dict[str, Any]) -> AsyncIterator[Site]:
    policy_dir = root / "policy.d"
    policy_dir.mkdir()
    os.chmod(policy_dir, 0o755)
    config = parse_config(
        {
            "socket": str(root / "tenant.sock"),
            "socket_group": MY_GROUP,
            "admin_socket": str(root / "admin.sock"),
            "policy_dir": str(policy_dir),
            "audit_log": str(root / "audit.jsonl"),
            "state_dir": str(root / "state"),
            "console_log_dir": str(root / "console"),
            "hooks_dir": str(root / "hooks.d"),
            "authorized_keys_dir": str(root / "authorized_keys"),
            "totp_users_file": str(root / "totp" / "users.oath"),
            "pam_service": "",
            "limits": {"requests_per_minute": 100000, **limits},
            "backend": {
                "type": "sim",
                "host": "test",
                "domains": [
                    {"name": name, "vcpus": 1, "memory_mib": 64, "boot_seconds": 0}
                    for name in DOMAINS
                ],
            },
        }
    )
    site = Site(root, None, config.socket, config.admin_socket, [])  # type: ignore[arg-type]
    site.write_policy(policy)
    site.helper = await start_helper(config)
    site.helper.events.add_listener(site.events.append)
    try:
        yield site
    finally:
        for client in site.clients:  # so that stopping need not wait for them
            client.close()
        await site.helper.stop()


def with_helper(
    policy: str = POLICY, **limits: Any
) -> Callable[[Callable[[Site], Awaitable[None]]], Callable[[Path], None]]:
    """Run the decorated ``async def test(site)`` against a fresh helper in ``tmp_path``."""

    def decorate(scenario: Callable[[Site], Awaitable[None]]) -> Callable[[Path], None]:
        def test(tmp_path: Path) -> None:
            async def run() -> None:
                async with asyncio.timeout(TEST_SECONDS), running(tmp_path, policy, limits) as s:
                    await scenario(s)

            asyncio.run(run())

        test.__name__ = scenario.__name__
        test.__doc__ = scenario.__doc__
        return test

    return decorate


# -- identity and a plain allowed request ------------------------------------------------------


@with_helper()
async def test_the_caller_is_who_the_kernel_says(site: Site) -> None:
    """Identity comes from SO_PEERCRED; a user name in the message changes nothing."""
    client = await site.connect()
    await client.send({"v": 1, "id": 1, "op": "whoami", "args": {}, "user": "root", "uid": 0})
    me = result_of(await client.reply())
    assert (me["user"], me["uid"]) == (ME, os.geteuid())
    (line,) = site.requests("whoami")
    assert (line["user"], line["decision"], line["result"]) == (ME, "allow", "ok")


@with_helper()
async def test_an_allowed_action_acts_and_its_audit_line_names_the_rule(site: Site) -> None:
    client = await site.connect()
    started = result_of(await client.call("start", domain="web1"))
    assert started["message"] == "web1: starting"
    await site.until(lambda: _is(site, "web1", "running"), "web1 never came up")
    (line,) = site.requests("start")
    uuid = (await site.helper.backend.lookup("web1")).uuid  # type: ignore[union-attr]
    assert line["domain"] == "web1" and line["uuid"] == uuid
    assert (line["decision"], line["result"], line["rule"]) == ("allow", "ok", f"{POLICY_FILE}:1")
    assert line["request_id"] == 1 and line["duration_ms"] >= 0


@with_helper()
async def test_list_shows_only_the_callers_domains(site: Site) -> None:
    client = await site.connect()
    listed = {d["name"]: d for d in result_of(await client.call("list"))}
    assert sorted(listed) == ["locked", "web1", "web2"]
    assert listed["locked"] == {"name": "locked", "confirm": "password"}  # no state without it
    assert listed["web1"]["state"] == "shutoff"


# -- refusals ------------------------------------------------------------------------------


@with_helper()
async def test_not_allowed_and_not_there_get_the_same_answer(site: Site) -> None:
    client = await site.connect()
    for name in ("other", "nosuch"):
        assert error_of(await client.call("start", domain=name)) == (
            "denied",
            f"{name}: no such domain or permission denied",
        )
    assert await site.state("other") == "shutoff"
    other, nosuch = site.requests("start")
    assert (other["decision"], other["reason"]) == ("deny", "no rule grants this")
    assert (nosuch["decision"], nosuch["reason"]) == ("deny", "no rule grants this")
    denied = [(e.kind, e.domain, e.user) for e in site.events if e.kind == "denied"]
    assert denied == [("denied", "other", ME), ("denied", "nosuch", ME)]


MALFORMED: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
    ({"v": 2, "id": 1, "op": "whoami"}, "unsupported protocol version", {"action": None}),
    ({"v": 1, "id": True, "op": "whoami"}, "request id missing or invalid", {"request_id": None}),
    ({"v": 1, "id": 1, "op": "launch"}, "unknown operation", {"action": "'launch'"}),
    ({"v": 1, "id": 1, "op": "status", "args": []}, "args must be an object", {}),
    (protocol.request(1, "status", {}), "invalid domain name", {"domain": "None"}),
    (
        protocol.request(1, "status", {"domain": "../x"}),
        "invalid domain name",
        {"domain": "'../x'"},
    ),
    (protocol.request(1, "status", {"domain": "a" * 65}), "invalid domain name", {}),
    (protocol.request(1, "status", {"domain": "web1", "colour": 1}), "unexpected argument", {}),
    (protocol.request(1, "status", {"domain": "web1", "password": 5}), "password: expected", {}),
    (protocol.request(1, "log", {"domain": "web1", "lines": 0}), "lines: expected 1..10000", {}),
    (protocol.request(1, "shutdown", {"domain": "web1", "wait": -1}), "wait: expected 0..", {}),
    (protocol.request(1, "shutdown", {"domain": "web1", "force": 1}), "force: expected true", {}),
    (protocol.request(1, "console", {"domain": "web1", "replay": -1}), "replay: expected a", {}),
    (protocol.request(1, "sysrq", {"domain": "web1", "key": "B"}), "key: expected one of", {}),
    (protocol.request(1, "events", {"lines": 10001}), "lines: expected 0..10000", {}),
    (protocol.request(1, "refused", {"line": 7}), "refused: expected a line", {}),
]


@with_helper()
async def test_malformed_requests_are_usage_errors_and_audited_as_invalid(site: Site) -> None:
    """Each is refused before any decision, on a connection that goes on serving."""
    client = await site.connect()
    for message, expected, audited in MALFORMED:
        await client.send(message)
        reply = await client.reply()
        kind, text = error_of(reply)
        assert kind == "usage" and text.startswith(expected), (message, reply)
        assert reply["id"] == (1 if message.get("id") is not True else None)
        line = site.audit()[-1]
        assert (line["decision"], line["result"]) == ("invalid", "usage"), line
        assert all(line[key] == value for key, value in audited.items()), (line, audited)
    assert result_of(await client.call("whoami"))["user"] == ME
    assert await site.state("web1") == "shutoff"


@with_helper()
async def test_a_grant_that_wants_a_password_is_refused_while_pam_is_off(site: Site) -> None:
    client = await site.connect()
    refused = await client.call("status", domain="locked", password="anything")
    assert error_of(refused) == (
        "denied",
        "locked: this action needs a password, which is not set up",
    )
    (line,) = site.requests("status")
    assert (line["decision"], line["confirm"]) == ("deny", "password")
    assert "confirmed" not in line


@with_helper()
async def test_access_that_ends_while_the_request_waits_stops_the_action(site: Site) -> None:
    """The decision is taken again after the backend's lookup: a grant revoked meanwhile (the
    policy reloaded while the lookup waited) stops the start."""
    lookup = site.helper.backend.lookup

    async def lookup_while_the_grant_goes(name: str) -> Any:
        site.write_policy(POLICY.replace("@operator web1 web2", "@operator web2"))
        await site.helper.policy.reload_async()
        return await lookup(name)

    site.helper.backend.lookup = lookup_while_the_grant_goes  # type: ignore[method-assign]
    client = await site.connect()
    reply = await client.call("start", domain="web1")
    site.helper.backend.lookup = lookup  # type: ignore[method-assign]
    assert error_of(reply) == ("denied", "web1: no such domain or permission denied")
    assert await site.state("web1") == "shutoff"
    (line,) = site.requests("start")
    assert (line["decision"], line["reason"]) == ("deny", "access ended while the request waited")


@with_helper(requests_per_minute=1)
async def test_requests_over_the_budget_are_refused_and_audited_folded(site: Site) -> None:
    """A minute's budget of 1 still allows a burst of 10; the 11th waits for its refusal."""
    client = await site.connect()
    for _ in range(11):
        await client.request("whoami")
    replies = [await client.reply() for _ in range(11)]
    assert all(r["ok"] for r in replies[:10]), replies
    assert error_of(replies[10]) == ("temporary", "too many requests; slow down and try again")
    limited = [r for r in site.audit() if r["decision"] == "rate-limited"]
    assert [(r["action"], r["request_id"]) for r in limited] == [("whoami", 11)]


# -- the backend and the audit log in trouble -------------------------------------------------


@with_helper()
async def test_actions_wait_for_a_writable_audit_log_while_reads_go_on(site: Site) -> None:
    """With the audit log's file system full, a start is refused; status still answers."""
    audit = site.helper.audit
    assert audit._fd is not None
    kept = os.dup(audit._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, audit._fd)  # every write now fails with ENOSPC, as on a full file system
    try:
        client = await site.connect()
        assert result_of(await client.call("whoami"))["user"] == ME  # its record is lost
        kind, text = error_of(await client.call("start", domain="web1"))
        assert kind == "temporary" and text.startswith("the audit log cannot be written")
        assert result_of(await client.call("status", domain="web1"))["state"] == "shutoff"
    finally:
        os.dup2(kept, audit._fd)
        os.close(kept)
        os.close(full)
    assert result_of(await client.call("whoami"))["user"] == ME  # written again: back to normal
    assert result_of(await client.call("start", domain="web1"))["domain"] == "web1"
    assert [r["result"] for r in site.requests("start")] == ["ok"]


@with_helper(policy=f"allow user:{ME} status web1\n")
async def test_every_tenant_manages_their_own_keys_unless_a_rule_denies_it(site: Site) -> None:
    """``keys`` needs no grant (keys_self_service); a deny rule still stops it."""
    import paramiko

    key = paramiko.ECDSAKey.generate()
    line = f"{key.get_name()} {key.get_base64()} laptop"
    client = await site.connect()
    assert result_of(await client.call("keys-add", line=line))["fingerprint"].startswith("SHA256:")
    assert len(result_of(await client.call("keys"))["keys"]) == 1
    (added,) = site.requests("keys-add")
    assert (added["decision"], added["rule"]) == ("allow", "keys_self_service")
    # the last key goes too: this caller is no SSH login that its removal would lock out
    fingerprint = result_of(await client.call("keys"))["keys"][0]["fingerprint"]
    assert result_of(await client.call("keys-remove", fingerprint=fingerprint))
    assert result_of(await client.call("keys"))["keys"] == []
    site.write_policy(f"allow user:{ME} status web1\ndeny user:{ME} keys * reason=frozen\n")
    await site.helper.policy.reload_async()
    kind, _ = error_of(await client.call("keys"))
    assert kind == "denied"


@with_helper(policy=POLICY + f"allow user:{ME} keys *\n")
async def test_key_changes_wait_for_a_writable_audit_log_too(site: Site) -> None:
    """A tenant's own key change is audited like an action: refused while the log is full."""
    import paramiko

    key = paramiko.ECDSAKey.generate()
    line = f"{key.get_name()} {key.get_base64()} laptop"
    audit = site.helper.audit
    assert audit._fd is not None
    kept = os.dup(audit._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, audit._fd)
    try:
        client = await site.connect()
        assert result_of(await client.call("whoami"))["user"] == ME  # its record is lost
        kind, text = error_of(await client.call("keys-add", line=line))
        assert kind == "temporary" and text.startswith("the audit log cannot be written")
        assert result_of(await client.call("keys"))["keys"] == []
    finally:
        os.dup2(kept, audit._fd)
        os.close(kept)
        os.close(full)
    assert result_of(await client.call("whoami"))["user"] == ME  # written again
    assert result_of(await client.call("keys-add", line=line))


@with_helper()
async def test_one_power_action_per_domain_at_a_time(site: Site) -> None:
    backend = site.helper.backend
    start, under_way, go_on = backend.start, asyncio.Event(), asyncio.Event()

    async def slow_start(uuid: str) -> None:
        under_way.set()
        await go_on.wait()
        await start(uuid)

    backend.start = slow_start  # type: ignore[method-assign]
    first, second = await site.connect(), await site.connect()
    first_id = await first.request("start", domain="web1")
    await under_way.wait()  # the first start holds web1's lock
    busy = await second.call("start", domain="web1")
    assert error_of(busy) == ("temporary", "web1 is busy with another action; try again shortly")
    go_on.set()
    reply = await first.reply()
    assert reply["id"] == first_id and result_of(reply)["message"] == "web1: starting"


@with_helper(action_timeout_seconds=1)
async def test_a_backend_call_that_hangs_times_out(site: Site) -> None:
    async def hanging(uuid: str) -> None:
        await asyncio.Event().wait()

    site.helper.backend.reboot = hanging  # type: ignore[method-assign]
    client = await site.connect()
    reply = await client.call("reboot", domain="web1")
    assert error_of(reply) == ("temporary", "timed out; try again later")
    (line,) = site.requests("reboot")
    assert (line["decision"], line["result"], line["message"]) == (
        "allow",
        "temporary",
        "timed out",
    )


@with_helper()
async def test_an_unexpected_error_is_one_reply_and_one_audit_line(site: Site) -> None:
    async def broken(uuid: str) -> Any:
        raise RuntimeError("a bug in the helper")

    site.helper.backend.info = broken  # type: ignore[method-assign]
    client = await site.connect()
    reply = await client.call("status", domain="web1")
    assert error_of(reply) == ("failed", "internal error in the helper")
    (line,) = site.requests("status")
    assert line["result"] == "internal-error" and "a bug" not in json.dumps(reply)
    assert result_of(await client.call("whoami"))["user"] == ME  # the connection goes on


# -- requests that become sessions -------------------------------------------------------------


@with_helper()
async def test_a_console_reply_hands_the_connection_to_its_session(site: Site) -> None:
    client = await site.connect()
    result_of(await client.call("start", domain="web1"))
    await site.until(lambda: _is(site, "web1", "running"), "web1 never came up")
    attached = result_of(await client.call("console", domain="web1"))
    assert attached == {"domain": "web1", "state": "running", "mode": "write"}
    admin = await site.connect(site.admin_socket)
    (session,) = result_of(await admin.call("sessions"))
    assert (session["user"], session["domain"], session["mode"]) == (ME, "web1", "write")
    await client.send_raw(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, b"\r"))
    await client.send({"v": 1, "op": "detach"})
    while (closed := await client.message())["event"] == "ping":
        pass  # the keepalive every console session starts with
    assert (closed["event"], closed["reason"]) == ("closed", "detached")
    assert await client.closed_by_peer()
    assert result_of(await admin.call("sessions")) == []
    detach = [r for r in site.audit() if r["action"] == "console-detach"]
    assert [(r["user"], r["domain"], r["result"]) for r in detach] == [(ME, "web1", "detached")]


@with_helper()
async def test_events_follow_sends_new_events_after_its_reply(site: Site) -> None:
    follower, actor = await site.connect(), await site.connect()
    answer = result_of(await follower.call("events", domain="web2", follow=True))
    assert (answer["domain"], answer["events"], answer["follow"]) == ("web2", [], True)
    result_of(await actor.call("start", domain="web2"))
    while (record := await follower.message())["event"] == "ping":
        pass  # the keepalive every events session starts with
    assert record["event"] == "record", record
    assert (record["record"]["kind"], record["record"]["domain"]) == ("started", "web2")
    await follower.send({"v": 1, "op": "detach"})
    while (message := await follower.message())["event"] != "closed":
        if message["event"] == "record":
            assert message["record"]["domain"] == "web2", message  # only what it asked for
    assert message["reason"] == "detached"


# -- the listener --------------------------------------------------------------------------


@with_helper()
async def test_a_frame_that_breaks_the_framing_ends_the_connection(site: Site) -> None:
    for frame in (
        protocol.HEADER.pack(0x09, 2) + b"{}",  # no such frame type
        protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, b"ls\r"),  # outside a console
        protocol.HEADER.pack(protocol.FRAME_MESSAGE, 2) + b"[]",  # not an object
    ):
        client = await site.connect()
        await client.send_raw(frame)
        reply = await client.message()
        assert reply["id"] is None and error_of(reply)[0] == "usage", reply
        assert await client.closed_by_peer()
    protocol_lines = [r for r in site.audit() if r["action"] == "protocol"]
    assert [(r["user"], r["decision"]) for r in protocol_lines] == [(ME, "invalid")] * 3


@with_helper()
async def test_a_frame_cut_short_is_answered_and_audited(site: Site) -> None:
    """A connection that ends, or goes quiet, after some bytes of a frame gets a ``usage``
    reply saying which and one audit line; one that ends between frames is closed silently."""
    header = protocol.HEADER.pack(protocol.FRAME_MESSAGE, 2)
    for sent in (header[:1], header[:2], header[:3], header[:4], header, header + b"{"):
        client = await site.connect()
        await client.send_raw(sent)
        client.writer.write_eof()
        reply = await client.message()
        assert error_of(reply) == ("usage", "connection closed in the middle of a frame"), sent
        assert await client.closed_by_peer()

    quiet = protocol.FRAME_SECONDS
    protocol.FRAME_SECONDS = 0.2  # the rest of a frame, not the hour-long idle timeout
    try:
        client = await site.connect()
        await client.send_raw(header[:1])
        kind, message = error_of(await client.message())
        assert (kind, message) == ("usage", "no complete frame within 0.2 s")
        assert await client.closed_by_peer()
    finally:
        protocol.FRAME_SECONDS = quiet

    idle = await site.connect()
    idle.writer.write_eof()
    assert await idle.closed_by_peer()
    protocol_lines = [r for r in site.audit() if r["action"] == "protocol"]
    assert [(r["decision"], r["result"], r["message"]) for r in protocol_lines] == [
        ("invalid", "usage", "connection closed in the middle of a frame")
    ] * 6 + [("invalid", "usage", "no complete frame within 0.2 s")]


def test_the_listener_turns_callers_away_before_reading_a_request(tmp_path: Path) -> None:
    """Account refused (PAM's answer), not an allowed uid, over the per-user connection cap:
    each gets its one line (or, for a stranger on the admin socket, nothing) and an audit
    record, and no request reaches the API."""
    handled: list[dict[str, Any]] = []

    async def handle(caller: Caller, untrusted: dict[str, Any], progress: Any) -> Answer:
        handled.append(untrusted)
        return Answer(protocol.reply_ok(untrusted["id"], {}))

    async def refuse(caller: Caller, max_age: float | None) -> str | None:
        return "account expired"

    async def scenario() -> None:
        audit = AuditLog(str(tmp_path / "audit.jsonl"))
        audit.open()
        limits = Limits(max_connections_per_user=1)
        listeners = [
            Listener("expired", bind_socket(str(tmp_path / "a.sock"), 0o600, None), handle,
                     limits, audit, admit=refuse),
            Listener("admin", bind_socket(str(tmp_path / "b.sock"), 0o600, None), handle,
                     limits, audit, allowed_uids=frozenset()),
            Listener("capped", bind_socket(str(tmp_path / "c.sock"), 0o600, None), handle,
                     limits, audit),
        ]  # fmt: skip
        for listener in listeners:
            await listener.start()
        try:
            expired = await _connect(tmp_path / "a.sock")
            await expired.request("whoami")
            reply = await expired.message()
            assert error_of(reply) == (
                "denied",
                "your account may not use vpsshell (ask your provider)",
            )
            assert await expired.closed_by_peer()

            stranger = await _connect(tmp_path / "b.sock")
            with contextlib.suppress(ConnectionError):  # closed at once, before it could send
                await stranger.request("whoami")
            assert await stranger.closed_by_peer()  # not a word to a non-admin

            first = await _connect(tmp_path / "c.sock")
            assert result_of(await first.call("whoami")) == {}
            second = await _connect(tmp_path / "c.sock")
            kind, text = error_of(await second.message())
            assert (kind, text) == ("temporary", "too many open sessions; close one and try again")
            assert await second.closed_by_peer()
            first.close()
        finally:
            for listener in listeners:
                await listener.stop()
            audit.close()

    asyncio.run(asyncio.wait_for(scenario(), TEST_SECONDS))
    assert len(handled) == 1  # only the one connection within the cap was served
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    refused = {(r["socket"], r["result"]) for r in records if r["action"] == "connect"}
    assert refused == {("expired", "denied"), ("admin", "denied"), ("capped", "temporary")}


# -- the admin socket ----------------------------------------------------------------------


@with_helper()
async def test_the_admin_socket_audits_every_outcome(site: Site) -> None:
    admin = await site.connect(site.admin_socket)
    assert result_of(await admin.call("reload"))["rules"] == 3
    assert error_of(await admin.call("launch")) == ("usage", "unknown admin operation")
    assert error_of(await admin.call("crash", domain="nosuch")) == ("failed", "no such domain")
    kind, _ = error_of(await admin.call("crash", domain="web1"))  # sim: not running, no crash
    assert kind == "failed"
    assert result_of(await admin.call("kick", user=ME)) == {"kicked": 0}
    lines = [(r["action"], r["decision"], r["result"]) for r in site.audit() if "socket" in r]
    assert lines == [
        ("admin:reload", "allow", "ok"),
        ("admin:'launch'", "invalid", "usage"),
        ("admin:crash", "allow", "failed"),
        ("admin:crash", "allow", "failed"),
        ("admin:kick", "allow", "ok"),
    ]
    assert all(r["user"] == ME for r in site.audit() if "socket" in r)


def test_crash_exists_only_where_the_backend_can_inject_one() -> None:
    from vpsshell.backends import create_backend
    from vpsshell.daemon.admin_api import ADMIN_OPERATIONS

    sim = create_backend({"type": "sim"}, "/nonexistent")
    assert ADMIN_OPERATIONS.get("crash", sim) is not None
    no_crashes: Any = object()  # a backend without inject_crash (libvirt, xen)
    assert ADMIN_OPERATIONS.get("crash", no_crashes) is None
    assert ADMIN_OPERATIONS.get("reload", no_crashes) is not None


# -- small helpers -------------------------------------------------------------------------


async def _connect(path: Path) -> Client:
    reader, writer = await asyncio.open_unix_connection(str(path))
    return Client(reader, writer)


async def _is(site: Site, domain: str, state: str) -> bool:
    return await site.state(domain) == state
