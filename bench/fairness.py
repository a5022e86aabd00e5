"""Benchmark: fairness. Other tenants' ``status`` latency while one tenant floods the helper.

A real ``vpsshelld`` (sim backend, PAM on with the ``vpsshell`` service, the shipped
``[limits]``) serves real OS users created for the run. Victim tenants (``vpsb-victim1..N``,
separate processes, each its own OS user) measure the whole run long, on the raw protocol:

- *open*: the round trip of a ``status web1`` request on a connection they keep open;
- *new*: ``connect()`` + ``status web1`` + reply + close, what ``vpsshell -c`` pays besides
  starting Python (the helper runs a PAM account check on every new connection).

Each victim paces itself within one tenant's own budget (600 requests and 120 connections per
minute by default), at fixed intervals with jitter, so it never meets its own rate limit: that
is why there are several victims (one tenant alone gets only ten samples a second). Next to
each sample the victim takes the same one from a *control*: a null server on the same runtime
(Python asyncio, same framing) that nobody floods, so the control's tail is what the machine
costs (other load, the flood's own processes taking CPU), and the rest is the helper's. The
helper's own view comes from the audit log: ``duration_ms`` of the victims' requests ("in
helper", from the request read to its audit line).

Meanwhile a hostile tenant runs one flood at a time, each for ``--seconds``, from processes of
its own (a hand-written client, as a tenant with a shell escape could write):

1. ``burst-900``: 900 ``connect()`` calls at once on 30 threads, held open, again and again;
2. ``connect-loop``: bare connect/close as fast as possible, 4 processes;
3. ``password-16``/``password-48``: that many connections guessing the password of a
   ``confirm=password`` rule (``poweroff web3``) in a loop;
4. ``pipeline-1``/``pipeline-8``: unknown ops and garbage requests pipelined as fast as the
   socket takes them, on 1 and on 8 connections (one process each);
5. ``console-input``: attached as the writer of its own domain (``web2``), one-byte
   ``CONSOLE_DATA`` frames (keystrokes) as fast as possible, reading the echo;
6. ``takeover-loop``: ``console --takeover`` then detach, in a loop on 4 threads;
7. ``malformed``: oversized lengths, unknown frame types, 64 KiB of nested JSON, bad UTF-8 and
   console data outside a console, each on a new connection, 16 connections at a time.

Every flood is run by a tenant of its own (``vpsb-h-NAME``), so each starts with a full
budget (the worst case for the victims) and the audit lines of the flood are exactly those of
that uid. A quiet phase comes first and last. The report gives, per phase, the victims'
p50/p99/max of both measures, the control's p99, the helper's p99, failed victim requests,
the helper's CPU share (``/proc/PID/stat``), what the flood achieved (its client's counts of
replies by kind) and the audit records of its uid (lines, bytes, requests folded into
``repeated`` counts, PAM password checks), and the console log's growth.

    python bench/fairness.py [--seconds 8] [--victims 10] [--only NAME,NAME] [--json FILE]

Run it as root from the test venv (``/var/tmp/vpsshell-test-venv/bin/python``); about 2
minutes. ``VPSSHELL_BENCH_PROFILE=FILE`` runs the helper under cProfile (its event loop
thread) and writes the stats to FILE at the end. The same file is the victims' and the
attackers' program (``--role``), run with ``runuser`` as those users; they use only the
standard library and talk only to the helper's Unix socket in the run's temp dir. The
benchmark ends by itself; it never touches the system's helper, policy or logs, ends only
processes it started, and removes its temp dir and (unless ``--keep-users``) its users.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

HEADER = struct.Struct(">BI")
FRAME_MESSAGE = 0x01
FRAME_CONSOLE_DATA = 0x02
VICTIM_DOMAIN = "web1"
CONSOLE_DOMAIN = "web2"
PASSWORD_DOMAIN = "web3"
REPLY_TIMEOUT_SECONDS = 10.0
TARGET_P99_MS = 10.0
QUIET_CONTROL_P99_MS = 5.0  # above this the machine is busy with something else

# victims, per tenant: under the default 600 requests and 120 connections a minute
VICTIM_OPEN_PER_SECOND = 6.0
VICTIM_NEW_PER_SECOND = 1.75


# -- the raw protocol, as a tenant's own client speaks it --------------------------------------


def frame(frame_type: int, payload: bytes) -> bytes:
    return HEADER.pack(frame_type, len(payload)) + payload


def request(request_id: int, op: str, **args: Any) -> bytes:
    message = {"v": 1, "id": request_id, "op": op, "args": args}
    return frame(FRAME_MESSAGE, json.dumps(message).encode())


class Frames:
    """Frames from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def next(self) -> tuple[int, bytes] | None:
        """The next frame; None at the end of the stream."""
        while True:
            if len(self.buffer) >= HEADER.size:
                frame_type, length = HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= HEADER.size + length:
                    payload = bytes(self.buffer[HEADER.size : HEADER.size + length])
                    del self.buffer[: HEADER.size + length]
                    return frame_type, payload
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def reply(self) -> dict[str, Any] | None:
        """The next final reply (progress messages and console data skipped)."""
        while (got := self.next()) is not None:
            frame_type, payload = got
            if frame_type != FRAME_MESSAGE:
                continue
            message = json.loads(payload)
            if "progress" not in message:
                return dict(message)
        return None


def outcome(reply: dict[str, Any] | None) -> str:
    """A short label for a reply: ``ok``, or the error kind and message (digits as N)."""
    if reply is None:
        return "closed without reply"
    if reply.get("ok"):
        return "ok"
    error = reply.get("error") or {}
    message = re.sub(r"\d+", "N", str(error.get("message", "")))[:60]
    return f"{error.get('kind')}{' [id null]' if reply.get('id') is None else ''}: {message}"


def connect(path: str, timeout: float = REPLY_TIMEOUT_SECONDS) -> socket.socket:
    """Connect as ``vpsshell``'s client does: a blocking connect() bounded by SO_SNDTIMEO, so
    a full listen backlog makes it wait its turn in the kernel (a socket timeout would make
    CPython connect without blocking, and fail at once with EAGAIN)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = struct.pack("@ll", int(timeout), int(timeout % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 0, 0))
    sock.settimeout(timeout)
    return sock


# -- the victim: status latency on an open connection and on new ones --------------------------


class Probe:
    """One server as a victim sees it: a connection kept open, and new ones on demand."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ids = iter(range(1, 1 << 50))
        self.sock: socket.socket | None = None
        self.frames: Frames | None = None

    def status(self, sock: socket.socket, frames: Frames) -> dict[str, Any] | None:
        sock.sendall(request(next(self.ids), "status", domain=VICTIM_DOMAIN))
        return frames.reply()

    def on_open(self) -> str:
        """``status`` on the kept connection (opened again if the server closed it)."""
        try:
            if self.sock is None or self.frames is None:
                self.sock = connect(self.path)
                self.frames = Frames(self.sock)
            reply = self.status(self.sock, self.frames)
            if reply is None or reply.get("id") is None:  # closed: open another next time
                self.sock = None
            return outcome(reply)
        except OSError as exc:
            self.sock = None
            return "timed out" if isinstance(exc, TimeoutError) else f"socket error: {exc}"

    def on_new(self) -> str:
        """connect() + ``status`` + close, what ``vpsshell -c`` does."""
        try:
            with connect(self.path) as sock:
                return outcome(self.status(sock, Frames(sock)))
        except OSError as exc:
            return "timed out" if isinstance(exc, TimeoutError) else f"socket error: {exc}"


def run_victim(path: str, control_path: str, open_rate: float, new_rate: float) -> None:
    """Measure until a line (or EOF) on stdin, then print the samples as JSON:
    ``[monotonic start, kind, seconds, outcome]``; kind ``o``/``n`` is the helper on an open /
    a new connection, ``O``/``N`` the control server, measured right before or after (in turn)
    under the same machine load."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    rng = random.Random(os.getpid())
    samples: list[tuple[float, str, float, str]] = []
    helper, control = Probe(path), Probe(control_path)
    if helper.on_open() != "ok" or control.on_open() != "ok":
        raise SystemExit("the victim's status is not answered")
    print("ready", flush=True)
    now = time.monotonic()
    next_open = now + rng.random() / open_rate
    next_new = now + rng.random() / new_rate
    turn = 0
    while not stop.is_set():
        kind = "o" if next_open <= next_new else "n"
        if stop.wait(max(0.0, min(next_open, next_new) - time.monotonic())):
            break
        turn += 1
        pairs = [(kind, helper), (kind.upper(), control)]
        for label, probe in pairs if turn % 2 else reversed(pairs):
            started = time.monotonic()
            began = time.perf_counter()
            result = probe.on_open() if kind == "o" else probe.on_new()
            samples.append((round(started, 4), label, time.perf_counter() - began, result))
        if kind == "o":
            next_open = max(next_open + rng.uniform(0.8, 1.2) / open_rate, time.monotonic())
        else:
            next_new = max(next_new + rng.uniform(0.8, 1.2) / new_rate, time.monotonic())
    print(json.dumps(samples), flush=True)


def run_control_server(path: str) -> None:
    """The control: a server on the same runtime (Python asyncio, a Unix socket, the same
    framing) answering every request with a fixed ``status`` reply, with nothing of the helper
    (no peer check, policy, PAM, audit, limits). Nobody floods it: its latency is what the
    machine (its load, the flood's own processes) costs the victims."""
    import asyncio

    result = {"name": VICTIM_DOMAIN, "uuid": "0" * 36, "state": "running", "vcpus": 1}
    result.update(memory_mib=512, uptime_seconds=1.0, host="localhost")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                _, length = HEADER.unpack(await reader.readexactly(HEADER.size))
                message = json.loads(await reader.readexactly(length))
                reply = {"v": 1, "id": message.get("id"), "ok": True, "result": result}
                writer.write(frame(FRAME_MESSAGE, json.dumps(reply).encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(serve, path)
        os.chmod(path, 0o666)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        server.close()

    asyncio.run(main())


# -- the attacker: one flood per scenario ------------------------------------------------------


class Tally:
    """Counters shared by an attacker's threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def add(self, label: str, count: int = 1) -> None:
        with self.lock:
            self.counts[label] += count


def _raise_open_files() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _open_many(path: str, count: int, threads: int, tally: Tally) -> list[socket.socket]:
    """``count`` connect()s on ``threads`` threads at once; the sockets that got in (with a
    socket timeout, as ``vpsshell`` connects: those that find the backlog full fail)."""
    opened: list[socket.socket] = []
    lock = threading.Lock()

    def opener(share: int) -> None:
        for _ in range(share):
            try:
                sock = connect(path, timeout=2.0)
            except OSError as exc:
                tally.add(f"connect() failed: {exc.strerror or exc}")
                continue
            with lock:
                opened.append(sock)

    workers = [threading.Thread(target=opener, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return opened


def attack_burst(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """900 connect()s at once, held 2 s, again and again; then each socket says whether it
    was refused (a reply, then the end) or is still held (admitted, waiting for a request)."""
    _raise_open_files()
    while time.monotonic() < deadline - 0.5:
        opened = _open_many(path, 900, threads, tally)
        tally.add("connect() done", len(opened))
        tally.add("bursts")
        time.sleep(max(0.0, min(2.0, deadline - time.monotonic())))
        for sock in opened:
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                tally.add("held open (admitted), summed over bursts")
            except OSError as exc:
                tally.add(f"recv failed: {exc.strerror}")
            else:
                if len(data) >= HEADER.size:
                    _, length = HEADER.unpack_from(data)
                    tally.add(outcome(json.loads(data[HEADER.size : HEADER.size + length])))
                else:
                    tally.add("closed without reply")
            sock.close()


def attack_connect_loop(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """Bare connect() and close() as fast as possible (a blocking connect: on a full backlog it
    waits for room, so this goes exactly as fast as the helper accepts)."""
    done = failed = 0
    while True:
        for _ in range(64):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
                done += 1
            except OSError:
                failed += 1
            sock.close()
        if time.monotonic() >= deadline:
            break
    tally.add("connect+close", done)
    if failed:
        tally.add("connect() failed", failed)


def _request_loop(
    path: str,
    deadline: float,
    tally: Tally,
    threads: int,
    make_request: Callable[[int, int], bytes],
) -> None:
    """``threads`` connections, each sending one request at a time and reading its reply;
    a connection the helper refuses or closes is opened again 0.25 s later."""

    def worker(number: int) -> None:
        sock: socket.socket | None = None
        frames: Frames | None = None
        sent = 0
        while time.monotonic() < deadline:
            if sock is None:
                try:
                    sock = connect(path, timeout=3.0)
                    frames = Frames(sock)
                except OSError as exc:
                    tally.add(f"connect() failed: {exc.strerror or exc}")
                    time.sleep(0.25)
                    continue
            assert frames is not None
            sent += 1
            try:
                sock.sendall(make_request(number, sent))
                reply = frames.reply()
            except OSError as exc:
                tally.add(f"socket error: {exc.strerror or exc}")
                reply = None
            if reply is not None:
                tally.add(outcome(reply))
            if reply is None or reply.get("id") is None:
                sock.close()
                sock = None
                time.sleep(0.25)

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 3.0)


def attack_password(path: str, deadline: float, tally: Tally, threads: int) -> None:
    def guess(number: int, sent: int) -> bytes:
        password = f"guess-{number}-{sent}"
        return request(sent, "poweroff", domain=PASSWORD_DOMAIN, password=password)

    _request_loop(path, deadline, tally, threads, guess)


def attack_takeover(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """``console --takeover`` then ``detach``, read to the end, on a new connection each time."""

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                with connect(path, timeout=3.0) as sock:
                    frames = Frames(sock)
                    sock.sendall(
                        request(1, "console", domain=CONSOLE_DOMAIN, takeover=True, replay=0)
                    )
                    reply = frames.reply()
                    tally.add(outcome(reply))
                    if reply is None or not reply.get("ok"):
                        if reply is None or reply.get("id") is None:
                            time.sleep(0.05)
                        continue
                    sock.sendall(frame(FRAME_MESSAGE, b'{"op":"detach"}'))
                    while (got := frames.next()) is not None:
                        if got[0] == FRAME_MESSAGE:
                            event = json.loads(got[1])
                            if event.get("event") == "closed":
                                tally.add(f"session closed: {event.get('reason')}")
            except OSError as exc:
                tally.add(f"socket error: {exc.strerror or exc}")
                time.sleep(0.05)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 3.0)


def _send_until(sock: socket.socket, data: bytes, deadline: float, tally: Tally) -> float:
    """Write ``data`` over and over as fast as the socket takes it, until ``deadline``; never
    cuts a frame in two (a send that times out resumes where it stopped). Returns how many
    copies went out (a fraction for the last one)."""
    view = memoryview(data)
    copies = offset = 0
    while time.monotonic() < deadline:
        try:
            offset += sock.send(view[offset:])
        except TimeoutError:
            continue  # the helper is not reading now: keep trying until the deadline
        except OSError as exc:
            tally.add(f"send failed: {exc.strerror or exc}")
            break
        if offset == len(data):
            copies, offset = copies + 1, 0
    return copies + offset / len(data)


GARBAGE_REQUESTS = [
    b'{"v":1,"id":%d,"op":"xyzzy","args":{}}',
    b'{"v":1,"id":%d,"op":"status","args":[]}',
    b'{"v":2,"id":%d,"op":"list"}',
    b'{"v":1,"id":true,"op":"list","n":%d}',
    b'{"v":1,"id":%d,"op":"status","args":{"domain":"../../etc/passwd"}}',
    b'{"v":1,"id":%d,"op":"list","args":{"user":"root"}}',
]


def attack_pipeline(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """One connection: a writer thread pipelining garbage requests in batches of 300 as fast
    as the socket takes them, a reader thread counting the replies."""
    sock = connect(path, timeout=0.5)
    frames = Frames(sock)
    batch = b"".join(
        frame(FRAME_MESSAGE, GARBAGE_REQUESTS[n % len(GARBAGE_REQUESTS)] % (n + 1))
        for n in range(300)
    )

    def reader() -> None:
        while time.monotonic() < deadline + 1.0:
            try:
                reply = frames.reply()
            except TimeoutError:
                continue
            except OSError:
                return
            if reply is None:
                tally.add("closed by the helper")
                return
            tally.add(outcome(reply))

    threading.Thread(target=reader, daemon=True).start()
    batches = _send_until(sock, batch, deadline, tally)
    tally.add("requests written", int(batches * 300))
    time.sleep(1.0)  # replies still on their way
    sock.close()


def attack_console_input(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """The writer of its own domain's console, typing one-byte frames as fast as possible."""
    sock = connect(path, timeout=0.5)
    frames = Frames(sock)
    sock.sendall(request(1, "console", domain=CONSOLE_DOMAIN, takeover=True, replay=0))
    reply = frames.reply()
    tally.add(f"attach: {outcome(reply)}")
    if reply is None or not reply.get("ok"):
        return
    keys = b"".join(frame(FRAME_CONSOLE_DATA, b"x") for _ in range(999))
    keys += frame(FRAME_CONSOLE_DATA, b"\r")
    received = 0

    def reader() -> None:
        nonlocal received
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            received += len(data)

    threading.Thread(target=reader, daemon=True).start()
    started = time.monotonic()
    typed = int(_send_until(sock, keys, deadline, tally) * len(keys))
    elapsed = time.monotonic() - started
    tally.add("keystroke bytes written into the socket (6 per key)", typed)
    tally.add("keystroke bytes/s written", int(typed / max(elapsed, 0.001)))
    tally.add("console output bytes received", received)
    sock.close()


def _malformed_frames() -> list[tuple[str, bytes]]:
    nested_objects = b'{"a":' * 20000 + b"1" + b"}" * 20000
    return [
        ("length 4 GiB", HEADER.pack(FRAME_MESSAGE, 0xFFFFFFFF)),
        ("length 64 KiB + 1", HEADER.pack(FRAME_MESSAGE, 65537) + b"{" * 64),
        ("unknown frame type", frame(0x7F, b"hello")),
        ("64 KiB of [", frame(FRAME_MESSAGE, b"[" * 65536)),
        ("[[[...]]] 32768 deep", frame(FRAME_MESSAGE, b"[" * 32768 + b"]" * 32768)),
        ("objects 20000 deep", frame(FRAME_MESSAGE, nested_objects[:65536])),
        ("not UTF-8", frame(FRAME_MESSAGE, b'{"v":1,"id":1,"op":"\xff\xfe"}')),
        ("console data", frame(FRAME_CONSOLE_DATA, b"keys")),
        ("number 1e999", frame(FRAME_MESSAGE, b'{"v":1,"id":1e999,"op":"list"}')),
    ]


def attack_malformed(path: str, deadline: float, tally: Tally, threads: int) -> None:
    """Each thread: a new connection, one malformed frame, read to the end, again."""
    malformed = _malformed_frames()

    def worker(number: int) -> None:
        index = number
        while time.monotonic() < deadline:
            name, data = malformed[index % len(malformed)]
            index += 1
            try:
                with connect(path, timeout=3.0) as sock:
                    sock.sendall(data)
                    reply = Frames(sock).reply()
            except OSError as exc:
                tally.add(f"socket error: {exc.strerror or exc}")
                time.sleep(0.05)
                continue
            label = outcome(reply)
            tally.add(label)
            if reply is not None and "usage" in label:
                tally.add("malformed frames answered (usage)")
            elif reply is not None and reply.get("id") is None:
                time.sleep(0.05)  # refused at the door: try again shortly

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 3.0)


Attack = Callable[[str, float, Tally, int], None]
ATTACKS: dict[str, Attack] = {
    "burst": attack_burst,
    "connect-loop": attack_connect_loop,
    "password": attack_password,
    "pipeline": attack_pipeline,
    "console-input": attack_console_input,
    "takeover": attack_takeover,
    "malformed": attack_malformed,
}


def run_attacker(path: str, attack: str, start_at: float, seconds: float, threads: int) -> None:
    """Wait for ``start_at`` (CLOCK_MONOTONIC, shared by all processes), flood for
    ``seconds``, then print the counts as JSON and exit, whatever threads are still blocked."""
    tally = Tally()
    time.sleep(max(0.0, start_at - time.monotonic()))
    deadline = start_at + seconds
    worker = threading.Thread(
        target=ATTACKS[attack], args=(path, deadline, tally, threads), daemon=True
    )
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()) + 4.0)
    with tally.lock:
        print(json.dumps(dict(tally.counts)), flush=True)
    os._exit(0)


# -- the coordinator (root) --------------------------------------------------------------------


class Scenario(NamedTuple):
    name: str
    attack: str | None  # None: a quiet phase
    processes: int = 1  # attacker processes, each with ``threads`` threads
    threads: int = 1

    @property
    def user(self) -> str:
        """The flooder: a tenant of its own per scenario (its budget full, its audit apart)."""
        return f"vpsb-h-{self.name}"[:32]


SCENARIOS = [
    Scenario("quiet", None),
    Scenario("burst-900", "burst", threads=30),
    Scenario("connect-loop", "connect-loop", processes=4),
    Scenario("password-16", "password", threads=16),
    Scenario("password-48", "password", threads=48),
    Scenario("pipeline-1", "pipeline"),
    Scenario("pipeline-8", "pipeline", processes=8),
    Scenario("console-input", "console-input"),
    Scenario("takeover-loop", "takeover", threads=4),
    Scenario("malformed", "malformed", processes=2, threads=8),
    Scenario("quiet-again", None),
]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of the samples at or below."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def tree_bytes(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def ensure_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", name], check=True)


def remove_user(name: str) -> None:
    subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(user: str, *argv: str) -> list[str]:
    """This file, run as ``user`` with the same (isolated) Python."""
    script = os.path.abspath(__file__)
    return ["runuser", "-u", user, "--", sys.executable, "-I", script, *argv]


def summarize(samples: list[list[Any]], kind: str, start: float, end: float) -> dict[str, Any]:
    chosen = [s for s in samples if s[1] == kind and start <= s[0] < end]
    ok = sorted(s[2] * 1000 for s in chosen if s[3] == "ok")
    failed = Counter(s[3] for s in chosen if s[3] != "ok")
    result: dict[str, Any] = {"n": len(chosen), "failed": dict(failed)}
    # when in the phase the slow ones came (seconds from its start), for --json readers
    result["slow"] = [
        [round(s[0] - start, 3), round(s[2] * 1000, 2)]
        for s in chosen
        if s[3] == "ok" and s[2] * 1000 >= TARGET_P99_MS
    ]
    if ok:
        result.update(
            p50=percentile(ok, 0.50), p99=percentile(ok, 0.99), max=ok[-1], mean=sum(ok) / len(ok)
        )
    return result


def handler_times(
    records: list[dict[str, Any]], uids: set[int], wall_start: float, wall_end: float
) -> dict[str, Any]:
    """The victims' ``status`` requests as the helper timed them (``duration_ms`` in the audit
    log: from the request read to its audit line), for records stamped in whole seconds of the
    window (the log's clock has a resolution of one second)."""
    from datetime import datetime

    durations = []
    for record in records:
        if record.get("uid") not in uids or record.get("action") != "status":
            continue
        stamp = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        if math.ceil(wall_start) <= stamp <= wall_end - 1:
            durations.append(float(record.get("duration_ms", 0.0)))
    durations.sort()
    if not durations:
        return {"n": 0}
    return {
        "n": len(durations),
        "p50": percentile(durations, 0.5),
        "p99": percentile(durations, 0.99),
        "max": durations[-1],
    }


def audit_of(records: list[dict[str, Any]], uid: int) -> dict[str, Any]:
    mine = [r for r in records if r.get("uid") == uid]
    folded = sum(int(r.get("repeated", 0)) for r in mine)
    size = sum(len(json.dumps(r, separators=(",", ":"))) + 1 for r in mine)
    # a wrong password that PAM checked (a lockout or a check under way never reaches PAM)
    checks = sum(1 for r in mine if str(r.get("reason", "")).startswith("password not accepted"))
    return {"lines": len(mine), "bytes": size, "folded": folded, "pam_checks": checks}


def run_phase(
    scenario: Scenario,
    args: argparse.Namespace,
    sock: str,
    helper_pid: int,
    console_dir: str,
    spawn: Callable[[list[str]], subprocess.Popen[str]],
) -> dict[str, Any]:
    """One phase: the flood's processes start together at a given instant and end by
    themselves ``args.seconds`` later; the victims' samples of that window are the phase's."""
    start = time.monotonic() + (0.8 if scenario.attack else 0.2)  # runuser + Python start
    wall_start = time.time() + (start - time.monotonic())
    attackers = []
    if scenario.attack is not None:
        argv = ["--role", "attack", "--attack", scenario.attack, "--socket", sock]
        argv += ["--start-at", repr(start), "--seconds", str(args.seconds)]
        argv += ["--threads", str(scenario.threads)]
        attackers = [spawn(as_user(scenario.user, *argv)) for _ in range(scenario.processes)]
    time.sleep(max(0.0, start - time.monotonic()))
    cpu_before, host_before = cpu_ticks(helper_pid), host_cpu()
    console_before = tree_bytes(console_dir)
    time.sleep(max(0.0, start + args.seconds - time.monotonic()))
    cpu_after, host_after = cpu_ticks(helper_pid), host_cpu()
    counts: Counter[str] = Counter()
    for process in attackers:
        try:
            out, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            out, err = process.communicate()
            counts["attacker process killed at the end"] += 1
        lines = out.strip().splitlines()
        if lines:
            counts.update(json.loads(lines[-1]))
        else:
            counts[f"attacker failed: {err.strip()[-300:]}"] += 1
    time.sleep(args.settle)  # what the flood left queued is not the next phase's
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "name": scenario.name,
        "user": scenario.user if scenario.attack else None,
        "window": (start, start + args.seconds),
        "wall_window": (wall_start, wall_start + args.seconds),
        "helper_cpu": (cpu_after - cpu_before) / ticks / args.seconds,
        "host_cpu": (host_after[0] - host_before[0]) / max(1, host_after[1] - host_before[1]),
        "attacker": dict(counts),
        "console_log_growth": tree_bytes(console_dir) - console_before,
    }


def coordinate(args: argparse.Namespace) -> int:
    import pwd
    import secrets
    import shutil
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from harness import BIN, Helper, wait_until

    from vpsshell.daemon.config import Limits

    if os.geteuid() != 0:
        print("run as root: the tenants are real OS users", file=sys.stderr)
        return 2
    scenarios = SCENARIOS
    if args.only:
        wanted = set(args.only.split(","))
        scenarios = [s for s in SCENARIOS if s.attack is None or s.name in wanted]
    victims = [f"vpsb-victim{n}" for n in range(1, args.victims + 1)]
    hostile = [s.user for s in scenarios if s.attack is not None]
    for user in victims + hostile:
        ensure_user(user)
    for user in hostile:
        if "password" in user:  # a real password, so PAM checks guesses against one
            password = secrets.token_urlsafe(16)
            subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
    pam_file = Path("/etc/pam.d/vpsshell")
    if not pam_file.exists():  # the helper's PAM service, as `vpsshell-admin install` sets up
        shutil.copy(Path(__file__).resolve().parent.parent / "pam" / "vpsshell", pam_file)
    uids = {user: pwd.getpwnam(user).pw_uid for user in victims + hostile}

    policy = "".join(f"allow user:{v} @viewer {VICTIM_DOMAIN}\n" for v in victims)
    for user in hostile:
        policy += f"allow user:{user} @operator {CONSOLE_DOMAIN}\n"
        policy += f"allow user:{user} poweroff {PASSWORD_DOMAIN} confirm=password\n"
    limits = Limits()
    root = Path(tempfile.mkdtemp(prefix="vpsshell-fairness-"))
    os.chmod(root, 0o755)
    if args.unlimited:
        rates = {"requests_per_minute": 100000, "connections_per_minute": 100000}
    else:
        rates = {
            "requests_per_minute": limits.requests_per_minute,
            "connections_per_minute": limits.connections_per_minute,
        }
    profile = os.environ.get("VPSSHELL_BENCH_PROFILE")

    class ProfiledHelper(Helper):
        """The same ``vpsshelld``, under cProfile (its event loop's thread); the stats are
        written to ``profile`` when it exits."""

        def start(self) -> Helper:
            argv = [str(BIN / "python"), "-m", "cProfile", "-o", str(profile)]
            argv += [str(BIN / "vpsshelld"), "--config", str(self.config), "--foreground"]
            self.process = subprocess.Popen(
                argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
            )
            wait_until(self._answers, 30, f"vpsshelld never answered on {self.socket}")
            os.chmod(self.socket, 0o666)
            return self

    helper = (ProfiledHelper if profile else Helper)(root / "helper", policy=policy, **rates)

    started: list[subprocess.Popen[str]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    results: list[dict[str, Any]] = []
    try:
        helper.start()
        assert helper.process is not None
        pid = helper.process.pid
        console_users = [s.user for s in scenarios if s.attack in ("console-input", "takeover")]
        if console_users:  # the flooder's own domain, running (one request of its budget)
            env = ["env", "-i", f"VPSSHELL_SOCKET={helper.socket}", str(BIN / "vpsshell")]
            subprocess.run(
                ["runuser", "-u", console_users[0], "--", *env, "-c", f"start {CONSOLE_DOMAIN}"],
                check=True,
                capture_output=True,
            )
        sock = str(helper.socket)
        control_socket = str(root / "control.sock")
        control = spawn(
            [sys.executable, "-I", os.path.abspath(__file__), "--role", "control"]
            + ["--socket", control_socket]
        )
        assert control.stdout is not None
        if control.stdout.readline().strip() != "ready":
            raise RuntimeError("the control server did not start")
        rates_argv = ["--control-socket", control_socket]
        rates_argv += ["--open-rate", str(VICTIM_OPEN_PER_SECOND)]
        rates_argv += ["--new-rate", str(VICTIM_NEW_PER_SECOND)]
        victim_processes = [
            spawn(as_user(v, "--role", "victim", "--socket", sock, *rates_argv)) for v in victims
        ]
        for process in victim_processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"a victim did not start: {line!r}")
        console_dir = str(root / "helper" / "console")
        print(
            f"{len(victims)} victims, {args.seconds:g} s per phase, limits: "
            f"{'lifted' if args.unlimited else 'shipped defaults'}; "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        for scenario in scenarios:
            results.append(run_phase(scenario, args, sock, pid, console_dir, spawn))
            print(f"  {scenario.name}: done", flush=True)
        samples: list[list[Any]] = []
        for process in victim_processes:
            out, err = process.communicate("stop\n", timeout=30)
            if process.returncode != 0:
                raise RuntimeError(f"a victim failed: {err[-2000:]}")
            samples.extend(json.loads(out.strip().splitlines()[-1]))
        control.communicate("stop\n", timeout=10)
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
        helper.stop()  # writes the folded audit records still open
        records = helper.audit()
        if args.keep_dir:
            print(f"helper's files (config, audit and console logs) kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if not args.keep_users:
            for user in victims + hostile:
                remove_user(user)
    victim_uids = {uids[v] for v in victims}
    for result in results:
        start, end = result["window"]
        result["open"] = summarize(samples, "o", start, end)
        result["new"] = summarize(samples, "n", start, end)
        result["control_open"] = summarize(samples, "O", start, end)
        result["control_new"] = summarize(samples, "N", start, end)
        result["in_helper"] = handler_times(records, victim_uids, *result["wall_window"])
        if result["user"]:
            result["audit"] = audit_of(records, uids[result["user"]])
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if profile:
        print(f"helper profile: {profile}")
    return 0


def _latency(measure: dict[str, Any]) -> str:
    if "p50" not in measure:
        return "no answer"
    return f"{measure['p50']:5.2f} {measure['p99']:6.2f} {measure['max']:7.2f}"


def _p99(measure: dict[str, Any]) -> str:
    return f"{measure['p99']:6.2f}" if "p99" in measure else "     -"


def report(results: list[dict[str, Any]]) -> None:
    print()
    print("victims' status latency in ms; control = the same probe to an unflooded null server")
    print("on an open connection:")
    print(
        f"  {'phase':<14} {'p50':>6} {'p99':>7} {'max':>7}  {'control p99':>11}  "
        f"{'in helper p99':>13}  {'failed':>6}  {'helper CPU':>10}  host busy"
    )
    for result in results:
        opened, inside = result["open"], result["in_helper"]
        handler = f"{inside['p99']:6.2f}" if inside["n"] else "-"
        print(
            f"  {result['name']:<14} {_latency(opened):>22}  {_p99(result['control_open']):>11}  "
            f"{handler:>13}  {sum(opened['failed'].values()):6d}  "
            f"{result['helper_cpu'] * 100:8.1f} %  {result['host_cpu'] * 100:7.0f} %"
        )
    print("on a new connection each (connect + status + close):")
    print(f"  {'phase':<14} {'p50':>6} {'p99':>7} {'max':>7}  {'control p99':>11}  {'failed':>6}")
    for result in results:
        new = result["new"]
        print(
            f"  {result['name']:<14} {_latency(new):>22}  {_p99(result['control_new']):>11}  "
            f"{sum(new['failed'].values()):6d}"
        )
    counts = results[0]["open"]["n"], results[0]["new"]["n"]
    print(f"  ({counts[0]} and {counts[1]} samples a phase)")
    print()
    quiet = [r["control_open"].get("p99", math.inf) for r in results if r["user"] is None]
    if max(quiet, default=0.0) > QUIET_CONTROL_P99_MS:
        print(
            f"the control's p99 was {max(quiet):.1f} ms in a quiet phase: something else is "
            "loading this machine, and the tails above are largely its"
        )
    worst = max(results, key=lambda r: r["open"].get("p99", math.inf))
    worst_p99 = worst["open"].get("p99", math.inf)
    verdict = "met" if worst_p99 < TARGET_P99_MS else "MISSED"
    print(
        f"worst victim p99 on an open connection: {worst_p99:.2f} ms ({worst['name']}); "
        f"target under {TARGET_P99_MS:g} ms: {verdict}"
    )
    print()
    print("what each flood achieved (its client's counts) and its audit records")
    for result in results:
        if not result["user"]:
            continue
        audit = result["audit"]
        print(
            f"- {result['name']}: audit {audit['lines']} lines, {audit['bytes']} bytes, "
            f"{audit['folded']} more folded into 'repeated'; PAM password checks "
            f"{audit['pam_checks']}; console log +{result['console_log_growth']} bytes"
        )
        for label, count in sorted(result["attacker"].items(), key=lambda item: -item[1]):
            print(f"    {count:9d}  {label}")
        for measure in ("open", "new"):
            for label, count in result[measure]["failed"].items():
                print(f"    victim {measure}: {count} x {label}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each phase")
    parser.add_argument("--settle", type=float, default=1.5, help="pause after each flood")
    parser.add_argument("--victims", type=int, default=10)
    parser.add_argument("--only", help="scenarios to run (comma-separated), beside quiet")
    parser.add_argument("--unlimited", action="store_true", help="lift the rate limits")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--keep-users", action="store_true")
    parser.add_argument("--keep-dir", action="store_true", help="keep the helper's files")
    # the victims' and attackers' side of this file (run as those users)
    parser.add_argument("--role", choices=("victim", "attack", "control"), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--control-socket", help=argparse.SUPPRESS)
    parser.add_argument("--attack", choices=sorted(ATTACKS), help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--open-rate", type=float, default=VICTIM_OPEN_PER_SECOND)
    parser.add_argument("--new-rate", type=float, default=VICTIM_NEW_PER_SECOND)
    args = parser.parse_args(argv)
    if args.role == "victim":
        run_victim(args.socket, args.control_socket, args.open_rate, args.new_rate)
        return 0
    if args.role == "control":
        run_control_server(args.socket)
        return 0
    if args.role == "attack":
        run_attacker(args.socket, args.attack, args.start_at, args.seconds, args.threads)
        return 0
    return coordinate(args)


if __name__ == "__main__":
    sys.exit(main())
