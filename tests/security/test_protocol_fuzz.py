"""Protocol fuzzing: random and mutated frames and messages, sent to a running helper by a tenant.

A tenant can write their own client, so anything may arrive on the helper's socket. Hypothesis
makes it up here: frames with random types and lengths, frames cut short, random bytes, valid
frames with bytes flipped, inserted, cut or repeated, and message objects whose ``v``, ``id``,
``op``, ``args`` and each argument of each operation take random JSON values of random types and
sizes. vpst-mallory sends them, on connections her own process opened (``SO_PEERCRED`` says
mallory). She owns web4, may look at web3 (``@viewer``) and has nothing on web1, web2, db1 and
stubborn. (Mallory and carol, because no other test changes their accounts: an account refused
by PAM midway would fail the run for nothing.)
Some examples open a console or events session first and fuzz what follows. After every
example:

- the helper still answers another tenant promptly (carol's ``list``, on a connection held
  open for the whole run), and carol received nothing she did not ask for, neither there nor
  on a second connection following the events of the domains mallory has nothing on;
- every frame mallory sent got what docs/protocol.md says: a request gets exactly one final reply,
  with its id (``null`` when the id is not valid), ``usage`` when the request is malformed,
  ``denied`` when the policy does not allow it; a frame the helper must refuse gets a
  ``usage`` reply with ``"id": null`` and the connection ends; and each final reply has exactly
  one audit line, with the same outcome;
- nothing the policy denies mallory was done: no audit line of hers says ``allow`` for what
  her grants do not cover, and the domains she has no grant on are as they were (their state
  as carol sees it, and no event of theirs).

Runs: by default a short, reproducible run for CI (derandomized, no example database,
``CI_EXAMPLES`` examples per test: seconds, each example takes a few milliseconds). A long,
randomized run (examples per test; 20000 take about 10 minutes)::

    sudo VPSSHELL_FUZZ_EXAMPLES=20000 ./run-tests -k protocol_fuzz

A failure prints the shrunk example and a ``@reproduce_failure`` blob; ``--hypothesis-seed=N``
repeats a whole run; ``--hypothesis-show-statistics`` shows what the examples ran into.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, Helper, wait_until
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from vpsshell import protocol

pytestmark = pytest.mark.root


CI_EXAMPLES = 150
LONG_RUN_EXAMPLES = int(os.environ.get("VPSSHELL_FUZZ_EXAMPLES") or 0)
FUZZ = settings(
    max_examples=LONG_RUN_EXAMPLES or CI_EXAMPLES,
    derandomize=not LONG_RUN_EXAMPLES,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)

# No step of the helper takes long here (sim domains, waits capped at WAIT_MAX seconds): an
# exchange or an answer slower than this is a hang, not a slow machine.
HANG_SECONDS = 30.0

FUZZER, OBSERVER = "vpst-mallory", "vpst-carol"
POLICY = """\
# the fuzzing tenant: owns web4, may look at web3, has nothing on the others
allow user:vpst-mallory @all      web4
allow user:vpst-mallory @viewer   web3
# the observer: sees every domain mallory must not touch, and their events (not web3's: mallory
# may watch web3, and carol would be told)
allow user:vpst-carol   @operator web1 web2 db1 stubborn
allow user:vpst-carol   start     web3
"""
WAIT_MAX = 2
# no waiting on the helper's own throttles (their tests are elsewhere): waits at most
# WAIT_MAX seconds, keystrokes as fast as they come
LIMITS = f"""
shutdown_wait_default_seconds = 1
shutdown_wait_max_seconds = {WAIT_MAX}
connections_burst = 100000
console_input_bytes_per_second = {1 << 30}
console_input_burst_bytes = {1 << 30}
"""
ACTIONS = {"status", "start", "shutdown", "reboot", "poweroff", "reset", "console", "watch"}
ACTIONS |= {"log", "sysrq", "events"}
FUZZER_MAY = {"web4": ACTIONS, "web3": {"status", "log", "watch", "events"}}
UNTOUCHABLE = ("web1", "web2", "web3", "db1", "stubborn")  # their state, as carol sees it
RUNNING_AT_START = ("web1", "web3", "db1", "stubborn")

# -- the contract, from docs/protocol.md (the oracle: written apart from the helper's code) ----

DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
MAX_ID = 2**53
SYSRQ_KEYS = "0123456789abcdefghijklmnopqrstuvwxyz"
KINDS = {"failed", "usage", "temporary", "denied", "confirm"}
NO_DOMAIN_OPS = ("list", "whoami", "version")
DOMAIN_OPS = ("status", "start", "reboot", "poweroff", "reset", "shutdown", "console", "watch")
DOMAIN_OPS += ("log", "sysrq")
OPS = (*NO_DOMAIN_OPS, *DOMAIN_OPS, "events", "refused")
ARGUMENTS = {
    **{op: {"domain"} for op in (*NO_DOMAIN_OPS, "status", "start", "reboot", "poweroff")},
    "reset": {"domain"},
    "shutdown": {"domain", "wait", "force"},
    "console": {"domain", "takeover", "replay"},
    "watch": {"domain", "takeover", "replay"},
    "log": {"domain", "lines"},
    "sysrq": {"domain", "key"},
    "events": {"domain", "follow", "lines"},
    "refused": {"line"},
}


def is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def valid_id(value: Any) -> bool:
    return is_int(value, 0, MAX_ID - 1)


def arguments_valid(op: str, args: dict[str, Any]) -> bool:
    """The argument rules of docs/protocol.md for ``op`` (``password`` already taken out)."""
    if op == "refused":
        return set(args) == {"line"} and isinstance(args["line"], str)
    if not set(args) <= ARGUMENTS[op]:
        return False
    if op == "shutdown":
        force = args.get("force", False)
        wait_ok = "wait" not in args and not force
        wait_ok = wait_ok or args.get("wait") is None or is_int(args.get("wait"), 0, WAIT_MAX)
        return type(force) is bool and wait_ok
    if op in ("console", "watch"):
        return type(args.get("takeover", False)) is bool and is_int(args.get("replay", 0), 0, 2**63)
    if op == "log":
        return is_int(args.get("lines", 100), 1, 10000)
    if op == "sysrq":
        key = args.get("key")
        return isinstance(key, str) and len(key) == 1 and key in SYSRQ_KEYS
    if op == "events":
        return type(args.get("follow", False)) is bool and is_int(args.get("lines", 100), 0, 10000)
    return True


def outcomes(message: dict[str, Any]) -> set[str]:
    """What a request from the fuzzing tenant may get: ``ok`` or error kinds."""
    version = message.get("v")
    if not (is_int(version, 1, 1) and valid_id(message.get("id"))):
        return {"usage"}
    op, args = message.get("op"), message.get("args", {})
    if not (isinstance(op, str) and op in OPS and isinstance(args, dict)):
        return {"usage"}
    domain = args.get("domain")
    needs_domain = op in DOMAIN_OPS or (op == "events" and domain is not None)
    if needs_domain and not (isinstance(domain, str) and DOMAIN_NAME.match(domain)):
        return {"usage"}
    password = args.get("password")
    if password is not None and not (
        isinstance(password, str) and len(password) <= 512 and "\0" not in password
    ):
        return {"usage"}
    if not arguments_valid(op, {k: v for k, v in args.items() if k != "password"}):
        return {"usage"}
    if not needs_domain:
        return {"ok"}
    if op not in FUZZER_MAY.get(domain, set()):
        return {"denied"}
    return {"ok", "failed", "temporary"}  # the domain's state, or busy with another action


def starts_session(message: dict[str, Any]) -> bool:
    """After an ``ok`` to this request the connection carries a console or events session."""
    op, args = message.get("op"), message.get("args", {})
    return op in ("console", "watch") or (op == "events" and args.get("follow") is True)


def plan(data: bytes) -> tuple[list[dict[str, Any]], str]:
    """What the helper must make of ``data`` followed by the end of input: the messages it
    takes as requests, in order, and how the connection ends: ``eof`` (clean), ``protocol``
    (a frame it must refuse: usage reply, audit line, close) or ``mid-header`` (1 to 4 bytes
    of a header, then the end: today the helper closes without a word; refusing it like a
    frame cut short, as docs/protocol.md says, is as good)."""
    requests: list[dict[str, Any]] = []
    position = 0
    while len(data) - position >= protocol.HEADER.size:
        try:
            frame_type, length = protocol.parse_header(
                data[position : position + protocol.HEADER.size]
            )
        except protocol.ProtocolError:
            return requests, "protocol"
        start = position + protocol.HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or frame_type != protocol.FRAME_MESSAGE:
            return requests, "protocol"
        try:
            requests.append(protocol.decode_message(payload))
        except protocol.ProtocolError:
            return requests, "protocol"
        position = start + length
    return requests, "eof" if position == len(data) else "mid-header"


def frame(payload: bytes, frame_type: int = protocol.FRAME_MESSAGE) -> bytes:
    """A frame as anyone may write it: no size check."""
    return protocol.HEADER.pack(frame_type, len(payload)) + payload


def message_frame(message: Any, ascii_only: bool = True) -> bytes:
    return frame(json.dumps(message, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


# -- tenants' connections ------------------------------------------------------------------

# Runs as the tenant: for each byte on the control socket, connects to the helper and passes
# the connected socket back (SCM_RIGHTS). The helper sees the tenant, from SO_PEERCRED.
CONNECTOR = r"""
import socket, sys
path, control = sys.argv[1], socket.socket(fileno=int(sys.argv[2]))
while control.recv(1):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        control.sendall(b"!")
    else:
        socket.send_fds(control, [b"+"], [sock.fileno()])
    sock.close()
"""


class Tenant:
    """Connections to the helper opened by a process of ``user``'s, used by the test."""

    def __init__(self, user: str, socket_path: Path) -> None:
        account = pwd.getpwnam(user)
        self.user, self.uid = user, account.pw_uid
        self.control, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [str(BIN / "python"), "-I", "-c", CONNECTOR, str(socket_path), str(theirs.fileno())],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=os.getgrouplist(user, account.pw_gid),
            pass_fds=(theirs.fileno(),),
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )
        theirs.close()
        self.control.settimeout(HANG_SECONDS)

    def connect(self) -> socket.socket:
        self.control.sendall(b"c")
        answer, fds, _, _ = socket.recv_fds(self.control, 1, 1)
        assert answer == b"+" and len(fds) == 1, f"{self.user} could not connect"
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self.control.close()
        self.process.wait(timeout=10)


def read_frames(sock: socket.socket, reader: protocol.FrameReader) -> list[tuple[int, bytes]]:
    data = sock.recv(65536)
    if not data:
        raise AssertionError("the helper closed an observer's connection")
    return reader.feed(data)


def pending(sock: socket.socket) -> bytes:
    """Whatever has arrived on ``sock`` unasked (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)
        sock.settimeout(HANG_SECONDS)


def converse(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` (reading all the while), end our side, read until the helper closes."""
    received, sent, writing = bytearray(), 0, True
    sock.setblocking(False)
    deadline = time.monotonic() + HANG_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while True:
            if writing and sent >= len(data):
                sock.shutdown(socket.SHUT_WR)
                writing = False
                selector.modify(sock, selectors.EVENT_READ)
            left = deadline - time.monotonic()
            assert left > 0, f"hang: no end from the helper; it sent {bytes(received[:300])!r}"
            for _, events in selector.select(left):
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:  # it closed with our bytes unread
                        return bytes(received)
                    if not chunk:
                        return bytes(received)
                    received += chunk
                if writing and events & selectors.EVENT_WRITE:
                    try:
                        sent += sock.send(data[sent : sent + 65536])
                    except (BrokenPipeError, ConnectionResetError):
                        sent = len(data)  # it stopped reading: what it has read decides


class Tail:
    """What a log file got since the last call, in whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_text(self) -> bytes:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete

    def new_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.new_text().splitlines() if line.strip()]


class Arena:
    """A helper, the fuzzing tenant, and two observing tenants with connections held open."""

    def __init__(self, root: Path) -> None:
        self.helper = Helper(root, policy=POLICY, extra_limits=LIMITS)
        self.audit = Tail(self.helper.audit_log)
        self.helper_log = Tail(self.helper.log)
        self.tenants: list[Tenant] = []
        self.sockets: list[socket.socket] = []

    def open(self) -> None:
        self.helper.start()
        self.fuzzer, self.observer = self.tenant(FUZZER), self.tenant(OBSERVER)
        self.carol = self.observer.connect()
        self.sockets.append(self.carol)
        self.carol.settimeout(HANG_SECONDS)
        self.carol_frames = protocol.FrameReader()
        self.next_id = 1
        for domain in RUNNING_AT_START:
            assert self.ask_carol("start", domain=domain)["ok"], domain
        wait_until(
            lambda: all(self.states()[d][0] == "running" for d in RUNNING_AT_START),
            20,
            "the observed domains running",
        )
        self.carol_events = self.observer.connect()
        self.sockets.append(self.carol_events)
        self.carol_events.settimeout(HANG_SECONDS)
        follow_request = protocol.request(1, "events", {"follow": True, "lines": 0})
        self.carol_events.sendall(protocol.encode_message(follow_request))
        self.carol_events_frames = protocol.FrameReader()
        follow = protocol.decode_message(
            read_frames(self.carol_events, self.carol_events_frames)[0][1]
        )
        assert follow["ok"] and follow["result"]["follow"], follow
        self.baseline = self.states()
        self.audit.new_lines()

    def carol_events_unasked(self) -> list[dict[str, Any]]:
        """What carol's events session got since the last look, but the keepalive's pings
        (answered, as her shell would, so that her session lasts the whole run)."""
        unasked = []
        for _, payload in self.carol_events_frames.feed(pending(self.carol_events)):
            message = protocol.decode_message(payload)
            if message.get("event") == protocol.EVENT_PING:
                self.carol_events.sendall(protocol.encode_message(protocol.pong()))
            else:
                unasked.append(message)
        return unasked

    def tenant(self, user: str) -> Tenant:
        self.tenants.append(Tenant(user, self.helper.socket))
        return self.tenants[-1]

    def close(self) -> None:
        """Whatever ``open`` got to, ended."""
        for sock in self.sockets:
            sock.close()
        for tenant in self.tenants:
            tenant.close()
        self.helper.stop()

    def ask_carol(self, op: str, **args: Any) -> dict[str, Any]:
        self.next_id += 1
        self.carol.sendall(protocol.encode_message(protocol.request(self.next_id, op, args)))
        while True:
            for _, payload in read_frames(self.carol, self.carol_frames):
                reply = protocol.decode_message(payload)
                assert reply.get("id") == self.next_id, f"carol got {reply}"
                if "ok" in reply:
                    return reply

    def states(self) -> dict[str, tuple[str, int | None]]:
        reply = self.ask_carol("list")
        assert reply["ok"], reply
        return {d["name"]: (d["state"], d["uptime_seconds"]) for d in reply["result"]}

    # -- one example ---------------------------------------------------------------------

    def attack(self, data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Bob sends ``data`` on a new connection; then every property is checked. Returns
        the final replies the fuzzing tenant got and her audit lines."""
        connection = self.fuzzer.connect()
        try:
            received = converse(connection, data)
        finally:
            connection.close()
        replies = self.check_replies(data, received, self.audit.new_lines())
        self.check_others()
        return replies

    def check_replies(
        self, data: bytes, received: bytes, audit: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        requests, ending = plan(data)
        reader = protocol.FrameReader()
        frames = reader.feed(received)
        assert not reader.buffer, f"the helper ended in the middle of a frame: {received[-200:]!r}"
        fuzzer_lines = [
            line
            for line in audit
            if line.get("uid") == self.fuzzer.uid and line.get("action") != "console-detach"
        ]
        for line in fuzzer_lines:
            check_audit_line(line)
        finals: list[dict[str, Any]] = []
        session = False
        for frame_type, payload in frames:
            if frame_type != protocol.FRAME_MESSAGE:
                assert session, f"console data outside a console session: {payload[:100]!r}"
                continue
            message = protocol.decode_message(payload)  # the helper speaks its own protocol
            assert message.get("v") == protocol.PROTOCOL_VERSION, message
            if "ok" in message:
                assert not session, f"a reply inside a session: {message}"
                finals.append(message)
                if message["ok"] and len(finals) <= len(requests):
                    session = starts_session(requests[len(finals) - 1])
            elif "progress" in message:
                assert message["id"] in [r.get("id") for r in requests], message
            else:
                assert session and "event" in message, f"unasked: {message}"
        tally(f"ending: {ending}" + (", session" if session else ""))
        expected = len(requests) + (ending == "protocol")
        if session or (ending == "mid-header" and len(finals) == expected + 1):
            expected = len(finals)
        assert len(finals) == expected, (
            f"{len(finals)} replies for {len(requests)} requests, ending {ending}: {finals[:5]}"
        )
        assert len(fuzzer_lines) == len(finals), f"{len(finals)} replies, audit: {fuzzer_lines}"
        for number, (reply, line) in enumerate(zip(finals, fuzzer_lines, strict=True)):
            outcome = "ok" if reply["ok"] else reply["error"]["kind"]
            tally(f"reply: {outcome}")
            assert line.get("result") == outcome, (reply, line)
            if number == len(requests):  # the frame the helper refused
                assert not reply["ok"] and reply["error"]["kind"] == "usage", reply
                assert reply["id"] is None, reply
                assert (line["action"], line["decision"]) == ("protocol", "invalid"), line
                continue
            request = requests[number]
            allowed = outcomes(request)
            assert outcome in allowed, f"{request!r:.500}\n got {reply}, expected {allowed}"
            decision = {"usage": "invalid", "denied": "deny"}.get(outcome)
            assert decision is None or line.get("decision") == decision, (reply, line)
            wanted_id = request.get("id") if valid_id(request.get("id")) else None
            assert reply["id"] == wanted_id and line.get("request_id") == wanted_id, (
                request,
                reply,
            )
        return finals, fuzzer_lines

    def check_others(self) -> None:
        """Carol got nothing unasked on either connection and is answered; untouchable domains
        are as they were; the helper logged no exception."""
        logged = self.helper_log.new_text()
        assert b"Traceback" not in logged, logged.decode(errors="replace")[-3000:]
        unasked = pending(self.carol)
        assert not unasked, f"carol received {unasked[:300]!r}"
        unasked = self.carol_events_unasked()
        assert not unasked, f"carol (following events) received {unasked[:3]!r}"
        states = self.states()  # also: the helper answers another tenant
        for domain in UNTOUCHABLE:
            state, uptime = states[domain]
            assert state == self.baseline[domain][0], f"{domain} is {state} now"
            before = self.baseline[domain][1]
            assert before is None or (uptime is not None and uptime >= before), (domain, uptime)
            self.baseline[domain] = (state, uptime)


def tally(what: str) -> None:
    """Counted in ``--hypothesis-show-statistics``: what the examples ran into."""
    if currently_in_test_context():
        event(what)


def check_audit_line(line: dict[str, Any]) -> None:
    """No audit line of the fuzzing tenant's records an action her grants do not cover, or a
    failure of the helper itself."""
    assert line.get("result") != "internal-error", line
    action, domain, decision = line.get("action"), line.get("domain"), line.get("decision")
    if decision == "allow" and action in ACTIONS and domain is not None:
        assert action in FUZZER_MAY.get(domain, set()), f"allowed what the policy denies: {line}"
    if line.get("result") == "ok":
        assert decision in ("allow", "refused"), line


@pytest.fixture(scope="module")
def arena(tenants: None) -> Iterator[Arena]:
    root = Path(tempfile.mkdtemp(prefix="vpsshell-fuzz-"))
    os.chmod(root, 0o755)
    running = Arena(root / "helper")
    try:
        running.open()
        yield running
    finally:
        running.close()
        shutil.rmtree(root, ignore_errors=True)


# -- what mallory sends --------------------------------------------------------------------------

DOMAINS = ("web1", "web2", "web3", "web4", "db1", "stubborn", "web4.", "nosuch", "WEB4", "a")
BOUNDARY_INTEGERS = (0, 1, -1, 2, 100, 10000, 10001, 2**31, 2**32, 2**53 - 1, -(2**53 - 1))
HOSTILE_STRINGS = (
    "",
    "web4\n",
    "web4\x00",
    " web4",
    "../../etc/passwd",
    "*",
    "@all",
    "a" * 64,
    "a" * 65,
    "\u202eweb4",
    "web4\u0301",
    "\U0001f600",
    "vpst-alice",
)
scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from(BOUNDARY_INTEGERS)
    | st.integers(-(2**53 - 1), 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(DOMAINS + HOSTILE_STRINGS)
    | st.text(max_size=30)
    # sizes up to past the frame limit
    | st.sampled_from((1000, 60000, 65500, 70000)).map(lambda n: "w" * n)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
passwords = st.none() | st.text(max_size=40) | st.sampled_from(("a" * 512, "a" * 513, "pw\x00"))

VALID_ARGUMENTS = {
    "domain": st.sampled_from(DOMAINS),
    "wait": st.none() | st.integers(0, WAIT_MAX),
    "force": st.booleans(),
    "takeover": st.booleans(),
    "replay": st.integers(0, 2**53 - 1) | st.sampled_from((0, 16384, 65536)),
    "lines": st.integers(0, 10000),
    "key": st.sampled_from(SYSRQ_KEYS),
    "follow": st.booleans(),
    "line": st.text(max_size=200),
}


@st.composite
def arguments(draw: st.DrawFn, op: str, mostly_valid: bool) -> dict[str, Any]:
    """``args`` for ``op``: each argument absent, valid, or a random JSON value; sometimes a
    password, sometimes an argument no operation takes."""
    args: dict[str, Any] = {}
    for name in sorted(ARGUMENTS.get(op, set())):
        choice = draw(st.integers(0, 9))
        if op in DOMAIN_OPS and name == "domain" and choice < 7:
            choice = 9  # a domain op without a domain dies early: mostly give it one
        if choice < 2:
            continue
        valid = choice >= (3 if mostly_valid else 4)
        args[name] = draw(VALID_ARGUMENTS[name] if valid else json_values)
    if draw(st.integers(0, 9)) == 0:
        args["password"] = draw(passwords)
    if draw(st.integers(0, 14)) == 0:
        name = draw(st.sampled_from(("user", "uid", "groups", "pid", "domains")) | st.text())
        args[name] = draw(json_values)
    return args


# values a sloppy or hostile client sends for the envelope's fields (2**53 is not a JSON
# integer the helper takes at all: the frame is refused)
NEAR_MISSES: dict[str, tuple[Any, ...]] = {
    "v": (0, 2, -1, "1", [1], 1.5, None, True, 1.0),
    "id": (True, False, 1.0, -1, "1", None, [1], {"id": 1}, 2**53 - 1, 2**53),
    "op": ("LIST", "list ", "", "__class__", "shell", "exec", "admin", None, ["list"], 1),
    "args": ([], "domain=web4", None, 0, [["domain", "web4"]], True),
}


@st.composite
def messages(draw: st.DrawFn, envelope_valid: bool) -> dict[str, Any]:
    """A request object: with ``envelope_valid``, a valid ``v`` and ``id``, a known ``op``
    and random arguments; otherwise mostly valid arguments in an envelope whose fields may be
    missing or any JSON value."""
    op = draw(st.sampled_from(OPS))
    message: dict[str, Any] = {"v": 1, "id": draw(st.integers(0, MAX_ID - 1)), "op": op}
    message["args"] = draw(arguments(op, mostly_valid=not envelope_valid))
    if envelope_valid:
        return message
    for field in ("v", "id", "op", "args"):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            del message[field]
        elif choice == 1:
            message[field] = draw(st.sampled_from(NEAR_MISSES[field]))
        elif choice == 2:
            message[field] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        message[draw(st.sampled_from(("user", "uid", "event", "ok")))] = draw(json_values)
    return message


hostile_payloads = st.sampled_from(
    (
        b"[" * protocol.MAX_FRAME_BYTES,
        b'{"v":1,"id":1,"op":"list","args":' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"v":1,"id":1,"op":"list","args":{"a":' + b"[" * 30 + b"]" * 30 + b"}}",
        b'{"v":1,"id":1,"op":"list","args":{"a":NaN}}',
        b'{"v":1,"id":1e999,"op":"list"}',
        b'{"v":1,"id":' + b"9" * 5000 + b',"op":"list"}',
        b'{"v":1,"id":1,"op":"list","op":"start","args":{"domain":"web1"}}',
        b'{"v":1,"id":1,"op":"status","args":{"domain":"web4","domain":"web1"}}',
        b'{"v":1,"id":1,"op":"refused","args":{"line":"\\ud800"}}',
        b'{"v":1,"id":1,"op":"refused","args":{"line":"\xff"}}',
        b'\xef\xbb\xbf{"v":1,"id":1,"op":"list"}',
        b'{"v":1,"id":1,"op":"list"} {}',
        b"",
        b"null",
        b"[]",
    )
)
payloads = (
    hostile_payloads
    | st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | messages(envelope_valid=False).map(lambda m: json.dumps(m).encode())
    | st.sampled_from((65535, 65536, 65537)).map(
        lambda size: (b'{"v":1,"id":1,"op":"list","pad":"' + b"x" * size)[: size - 2] + b'"}'
    )
)


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    """Frames with random types, lengths that fit or do not, random or hostile payloads; the
    stream maybe cut anywhere, maybe with garbage in front."""
    data = b""
    for _ in range(draw(st.integers(1, 3))):
        payload = draw(payloads)
        frame_type = draw(st.sampled_from((1, 1, 1, 2)) | st.integers(0, 255))
        length = draw(
            st.just(len(payload))
            | st.integers(0, len(payload) + 8)
            | st.sampled_from((protocol.MAX_FRAME_BYTES, protocol.MAX_FRAME_BYTES + 1, 2**32 - 1))
            | st.integers(0, 2**32 - 1)
        )
        data += protocol.HEADER.pack(frame_type, length) + payload
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(min_size=1, max_size=64)) + data
    return data


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """Valid request frames, then bytes flipped, overwritten, inserted, deleted, repeated; a
    header's length changed; the stream cut short."""
    requests = draw(st.lists(messages(envelope_valid=True), min_size=1, max_size=3))
    data = bytearray(b"".join(message_frame(r, True) for r in requests))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data) - 1)) if data else 0
        mutation = draw(st.sampled_from(("flip", "set", "insert", "delete", "repeat", "length")))
        if mutation == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "set" and data:
            data[where] = draw(st.sampled_from(b'"\\{}[],:0\x00\xff') | st.integers(0, 255))
        elif mutation == "insert":
            data[where:where] = draw(
                st.binary(min_size=1, max_size=16) | st.sampled_from((b"[" * 40,))
            )
        elif mutation == "delete":
            del data[where : where + draw(st.integers(1, 16))]
        elif mutation == "repeat":
            data[where:where] = data[where : where + draw(st.integers(1, 64))]
        elif mutation == "length" and len(data) >= protocol.HEADER.size:
            data[1:5] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    if draw(st.integers(0, 4)) == 0:
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@st.composite
def message_streams(draw: st.DrawFn, envelope_valid: bool) -> bytes:
    batch = draw(st.lists(messages(envelope_valid), min_size=1, max_size=3))
    return b"".join(message_frame(message, draw(st.booleans())) for message in batch)


SESSION_OPENERS = (
    {"op": "console", "args": {"domain": "web4", "takeover": True, "replay": 0}},
    {"op": "watch", "args": {"domain": "web4"}},
    {"op": "watch", "args": {"domain": "web3", "replay": 100}},
    {"op": "events", "args": {"follow": True, "lines": 0}},
    {"op": "events", "args": {"domain": "web4", "follow": True}},
)
# what a console client sends, and what it should not
session_frames = (
    st.binary(max_size=300).map(lambda keys: frame(keys, protocol.FRAME_CONSOLE_DATA))
    | st.sampled_from(({"op": "detach"}, {"op": "resize", "rows": 24, "cols": 80})).map(
        message_frame
    )
    | messages(envelope_valid=False).map(message_frame)
    | random_frames()
)


@st.composite
def session_streams(draw: st.DrawFn) -> bytes:
    """A console, watch or events-follow request that opens a session, then random frames."""
    opener = {"v": 1, "id": 1, **draw(st.sampled_from(SESSION_OPENERS))}
    frames = draw(st.lists(session_frames, max_size=4))
    return message_frame(opener) + b"".join(frames)


# -- the fuzz tests --------------------------------------------------------------------------


@FUZZ
@given(data=random_frames())
@example(data=frame(b"[" * protocol.MAX_FRAME_BYTES))  # was a RecursionError: no reply, no audit
def test_random_frames(arena: Arena, data: bytes) -> None:
    arena.attack(data)


@FUZZ
@given(data=mutated_frames())
def test_mutated_valid_frames(arena: Arena, data: bytes) -> None:
    arena.attack(data)


@FUZZ
@given(data=message_streams(envelope_valid=False))
@example(data=message_frame({"v": 1, "id": True, "op": "whoami"}))  # was taken as id 1
def test_random_message_objects(arena: Arena, data: bytes) -> None:
    arena.attack(data)


@FUZZ
@given(data=message_streams(envelope_valid=True))
def test_random_arguments_of_each_operation(arena: Arena, data: bytes) -> None:
    arena.attack(data)


@FUZZ
@given(data=session_streams())
def test_random_frames_inside_console_and_events_sessions(arena: Arena, data: bytes) -> None:
    arena.attack(data)


# -- what fuzzing found, kept as plain tests ---------------------------------------------------


def test_a_frame_of_nested_brackets_gets_usage_and_an_audit_line(arena: Arena) -> None:
    """64 KiB of ``[`` used to raise RecursionError in the helper: the connection closed with
    no reply and no audit line."""
    (reply,), (line,) = arena.attack(frame(b"[" * protocol.MAX_FRAME_BYTES))
    assert reply["error"] == {"kind": "usage", "message": "message nests deeper than 32"}
    assert reply["id"] is None
    assert (line["action"], line["decision"], line["result"]) == ("protocol", "invalid", "usage")


@pytest.mark.parametrize("request_id", [True, False, 1.0, -1, "7", [7], None])
def test_a_request_id_must_be_an_integer(arena: Arena, request_id: Any) -> None:
    """``"id": true`` used to be taken as the id 1 (``isinstance(True, int)`` in Python)."""
    request = {"v": 1, "id": request_id, "op": "whoami", "args": {}}
    (reply,), (line,) = arena.attack(message_frame(request))
    assert reply["id"] is None and reply["error"]["kind"] == "usage", reply
    assert line["request_id"] is None and line["result"] == "usage", line


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_boolean_or_a_float_is_not_version_1(arena: Arena, version: Any) -> None:
    (reply,), _ = arena.attack(message_frame({"v": version, "id": 1, "op": "whoami"}))
    assert reply["ok"] is False and reply["error"]["kind"] == "usage", reply
