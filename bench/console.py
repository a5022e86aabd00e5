"""Benchmark: console throughput and keystroke latency through the console hub, vs a raw pty.

Throughput (MiB/s, to 1 client and to 10 clients). The helper's own pieces (SimBackend,
ConsoleManager, TenantApi, Listener, the audit log and the policy, built from the same config
file ``vpsshelld`` reads, as ``vpsshell.daemon.main`` builds them) run in this process's event
loop. The clients are separate processes on the real Unix socket: each sends a real ``watch``
request (policy decision, audit line), then counts ``CONSOLE_DATA`` payload bytes. A producer
task in the helper's loop plays the guest printing as fast as it can: it calls the sim guest's
serial-port callback with 4 KiB writes, exactly where the guest's own output enters the backend,
so the bytes go guest -> SimConsoleStream -> hub (scrollback ring, on-disk log, one queue per
client) -> socket -> client. The hub never slows the guest down (a client more than 1 MiB behind
is dropped), so the producer keeps at most ``WINDOW_BYTES`` un-received by the slowest client:
clients report their count every ``ACK_BYTES`` on a pipe. That keeps the hub's queues full
without dropping anyone; the reports cost the helper's loop one small pipe read per 64 KiB per
client, so the figure is, if anything, a little low. The time runs from the first timed byte to
the moment every client has every byte. Two variants: "coalesced" lets the sim stream join
whatever the guest wrote while the hub was busy (what the sim backend does); "4 KiB reads" yields
to the loop after every write, so the hub handles each 4 KiB write on its own (what a backend
reading a pty or a libvirt stream 4 KiB at a time would cost). What the guest prints
(``--output``): ``text``, lines of a boot log and a coloured ``ls`` (escape sequences, CR LF,
some UTF-8), or ``binary``, every byte value (a recording keeps output raw, so both cost it
the same).

Recording off and on. Every throughput run is made twice, back to back, with helpers that differ
only in ``console_recordings`` (false, true); the table gives the on/off ratio of each variant
(the median of the rounds' ratios) against the target: recording costs at most 20 %. An "on"
run records the console while its clients are attached (one recording for all of them). A
recording stops at ``console_recording_bytes`` (8 MiB by default, at most 1 GiB in the config
file), which a fast run passes within a second; the "on" runs raise it to 1 TiB, and the caps
per domain and in all with it (else the finished recording would be removed at once), in the
helper's config object. After each run the recording must have ended (its info says when) and
hold every byte sent, then it is removed.

The full stack through typed input (``echo`` lines) would measure the sim guest's per-byte
Python line discipline, a few MiB/s, not the hub; that is why output is injected.

The raw pty figure: ``os.openpty()``, the slave in raw mode, one process writing 64 KiB buffers
into the master and this process reading the slave 64 KiB at a time. Master -> slave is the
direction of a real serial console (QEMU holds the master of ``-serial pty`` and writes guest
output into it; a host console client reads the slave), both ends run concurrently (a pty holds
only a few KiB, so "write it all, then read" measures nothing), and 64 KiB writes are the pty's
best case, so the target is measured against the highest honest figure.

Keystroke round trip (p50/p99). A real ``vpsshelld`` subprocess (sim backend, the same config),
``web1`` started and logged in on its console; this process attaches as the writer and sends one
key per ``CONSOLE_DATA`` frame, alternating ``a`` and DEL, and times until the guest's echo
(``a``, then ``BS SP BS``) has arrived. The baseline is the same keys through a raw pty pair with
a process echoing the same bytes back. The difference is the latency the helper adds (two tails
of a few dozen samples are noisy, so the verdict charges the helper with its whole p99 over the
pty's p50). ``vpsshelld``'s own CPU time per key comes from ``/proc/PID/schedstat``. Then once
more with 10 watcher processes attached and reading.

Throughput runs are interleaved in rounds, so each round sees the same machine load; the table
shows medians, ranges and each run's share of the raw pty figure of its own round.

    python bench/console.py [--seconds 1.5] [--rounds 3] [--keys 5000] [--output text|binary]

Everything runs on this machine, in a temp dir that is removed, and every process it starts is
ended; it never touches the system's helper, sockets, policy or logs. Run it from the test venv,
as any user: its policy grants the user running it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import pwd
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Helper, wait_until  # noqa: E402

from vpsshell import protocol  # noqa: E402
from vpsshell.backends.sim import SimBackend  # noqa: E402
from vpsshell.client import HelperClient  # noqa: E402

DOMAIN = "web1"
MIB = 1024 * 1024
WRITE_BYTES = 4096  # one guest write
ACK_BYTES = 64 * 1024  # a client reports its count this often
WINDOW_BYTES = 768 * 1024  # in flight to the slowest client; under the 1 MiB drop limit
READ_BYTES = 65536  # every reader (pty or socket) asks for this much per read, as vpsshell does
WARMUP_SECONDS = 0.5
COUNT = struct.Struct(">Q")
KEYS = ((b"a", b"a"), (b"\x7f", b"\b \b"))  # (key, the guest's echo of it)


def _text_write() -> bytes:
    """One guest write of what consoles carry: lines of a boot log and a coloured ``ls``, with
    escape sequences, CR LF and some UTF-8, whole lines padded to ``WRITE_BYTES``."""
    lines = [
        b"[  \x1b[0;32mOK\x1b[0m  ] Started \x1b[0;1;39msystemd-journald.service\x1b[0m"
        b" - Journal Service.\r\n",
        b"[   12.345678] virtio_net virtio0 ens3: renamed from eth0\r\n",
        b"drwxr-xr-x  2 root root  4096 Dec  5 07:11 \x1b[01;34mbin\x1b[0m\r\n",
        b"-rw-r--r--  1 web  web  12288 Dec  5 07:11 caf\xc3\xa9-men\xc3\xbc.txt  "
        b"\xe2\x94\x80\xe2\x94\x80 \xe2\x9c\x93\r\n",
    ]
    write = b""
    while len(write) + len(lines[0]) <= WRITE_BYTES:
        for line in lines:
            if len(write) + len(line) <= WRITE_BYTES:
                write += line
        lines.append(lines.pop(0))
    return write.ljust(WRITE_BYTES, b" ")


GUEST_WRITES = {
    "text": _text_write(),
    # every byte value: control characters and bytes that are not UTF-8, which a recording
    # escapes to six bytes each ("\u0001", "\ufffd"): its worst case
    "binary": bytes(range(256)) * (WRITE_BYTES // 256),
}
TARGET_THROUGHPUT_SHARE = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_RECORDING_COST = 0.2  # recording on may cost at most this share of the throughput


# -- the raw pty baseline ------------------------------------------------------------------


def _fork(child: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return pid


def _end(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def pty_throughput(seconds: float) -> float:
    """MiB/s from a writer process into the master to this process reading the raw slave.

    Master -> slave is the direction of serial console output (QEMU writes the guest's output
    into the master of ``-serial pty``; a console client reads the slave). Both ends run at
    once: a pty buffers only a few KiB, so "write a large buffer, then read it" would block."""
    master, slave = os.openpty()
    tty.setraw(slave)
    buffer = b"\x55" * 65536

    def write_forever() -> None:
        os.close(slave)
        while True:
            os.write(master, buffer)

    writer = _fork(write_forever)
    try:
        os.read(slave, READ_BYTES)  # the writer is running
        received = 0
        started = now = time.perf_counter()
        while now - started < seconds:
            received += len(os.read(slave, READ_BYTES))
            now = time.perf_counter()
        return received / (now - started) / MIB
    finally:
        _end(writer)
        os.close(master)
        os.close(slave)


def pty_round_trips(keys: int, warmup: int) -> list[float]:
    """Seconds per key: written into the master, echoed by a process on the raw slave."""
    master, slave = os.openpty()
    tty.setraw(slave)

    def echo_forever() -> None:
        os.close(master)
        while data := os.read(slave, READ_BYTES):
            os.write(slave, data.replace(b"\x7f", b"\b \b"))

    echoer = _fork(echo_forever)
    samples: list[float] = []
    try:
        for index in range(warmup + keys):
            key, echo = KEYS[index % 2]
            got = b""
            started = time.perf_counter()
            os.write(master, key)
            while len(got) < len(echo):
                got += os.read(master, READ_BYTES)
            elapsed = time.perf_counter() - started
            if got != echo:
                raise RuntimeError(f"pty echo: expected {echo!r}, got {got!r}")
            if index >= warmup:
                samples.append(elapsed)
        return samples
    finally:
        _end(echoer)
        os.close(master)
        os.close(slave)


# -- console clients on the wire protocol --------------------------------------------------


class ConsoleConnection:
    """A blocking client: one ``console``/``watch`` request, then console frames."""

    def __init__(self, path: str, op: str, domain: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buffer = bytearray()
        request = protocol.request(1, op, {"domain": domain, "replay": 0})
        self.sock.sendall(protocol.encode_message(request))
        frame_type, payload = self.next_frame()
        reply = protocol.decode_message(payload) if frame_type == protocol.FRAME_MESSAGE else {}
        if not reply.get("ok"):
            raise RuntimeError(f"{op} {domain} refused: {reply}")

    def receive(self) -> bool:
        chunk = self.sock.recv(READ_BYTES)
        self.buffer += chunk
        return bool(chunk)

    def pop_frame(self) -> tuple[int, bytes] | None:
        """The first complete frame in the buffer, removed from it; None if there is none."""
        size = protocol.HEADER.size
        if len(self.buffer) < size:
            return None
        frame_type, length = protocol.parse_header(bytes(self.buffer[:size]))
        if len(self.buffer) < size + length:
            return None
        payload = bytes(self.buffer[size : size + length])
        del self.buffer[: size + length]
        return frame_type, payload

    def next_frame(self) -> tuple[int, bytes]:
        while (frame := self.pop_frame()) is None:
            if not self.receive():
                raise RuntimeError("the helper closed the connection")
        return frame

    def type(self, data: bytes) -> None:
        self.sock.sendall(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, data))

    def read_until(self, want: bytes, timeout: float = 10.0) -> bytes:
        """Console output up to and including ``want``."""
        self.sock.settimeout(timeout)
        seen = b""
        try:
            while want not in seen:
                frame_type, payload = self.next_frame()
                if frame_type == protocol.FRAME_CONSOLE_DATA:
                    seen += payload
                else:
                    message = protocol.decode_message(payload)
                    if message.get("event") == "closed":
                        raise RuntimeError(f"console closed: {message}")
        finally:
            self.sock.settimeout(None)
        return seen

    def close(self) -> None:
        self.sock.close()


def reader_main(path: str, op: str, domain: str) -> int:
    """A console client process: counts payload bytes, reports on stdout every ACK_BYTES.

    Reports ``0`` once attached and the final count when the helper closes the session."""
    connection = ConsoleConnection(path, op, domain)
    report = sys.stdout.buffer
    report.write(COUNT.pack(0))
    report.flush()
    received = 0
    next_report = ACK_BYTES
    try:
        while connection.receive():
            while (frame := connection.pop_frame()) is not None:
                frame_type, payload = frame
                if frame_type == protocol.FRAME_CONSOLE_DATA:
                    received += len(payload)
                elif protocol.decode_message(payload).get("event") == "closed":
                    return 0
            if received >= next_report:
                report.write(COUNT.pack(received))
                report.flush()
                next_report = (received // ACK_BYTES + 1) * ACK_BYTES
    except ConnectionError:
        pass
    finally:
        report.write(COUNT.pack(received))
        report.flush()
        connection.close()
    return 0


def reader_command(path: str, op: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--reader", path, op, DOMAIN]


# -- throughput through the hub, helper in process -----------------------------------------


@asynccontextmanager
async def helper_in_process(
    config_path: str, recording_bytes: int | None
) -> AsyncIterator[SimBackend]:
    """The helper exactly as ``vpsshelld`` assembles it (``vpsshell.daemon.assembly``), in this
    process; yields the sim backend. Signals and the policy watcher are left out.
    ``recording_bytes`` replaces the per-recording cap of the config file, whose largest
    allowed value (1 GiB) is less than one fast run records, and the caps per domain and in
    all become 16 times it: else finished recordings would be removed as soon as the
    sessions end, before they can be checked."""
    from vpsshell.daemon.assembly import start_helper
    from vpsshell.daemon.config import load_config

    config = load_config(config_path)
    if recording_bytes is not None:
        limits = dataclasses.replace(
            config.limits,
            console_recording_bytes=recording_bytes,
            console_recordings_bytes_per_domain=16 * recording_bytes,
            console_recordings_bytes=16 * recording_bytes,
        )
        config = dataclasses.replace(config, limits=limits)
    helper = await start_helper(config)
    assert isinstance(helper.backend, SimBackend)
    try:
        yield helper.backend
    finally:
        await helper.stop()


class Readers:
    """Reader processes and the counts they report; ``progress`` is set on every report."""

    def __init__(self) -> None:
        self.processes: list[asyncio.subprocess.Process] = []
        self.counts: list[int] = []
        self.progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, path: str, clients: int) -> None:
        for index in range(clients):
            process = await asyncio.create_subprocess_exec(
                *reader_command(path, "watch"), stdout=asyncio.subprocess.PIPE
            )
            self.processes.append(process)
            self.counts.append(-1)
            self._tasks.append(asyncio.create_task(self._follow(index, process)))
        await asyncio.wait_for(self._until(lambda: min(self.counts) >= 0), 15)

    async def _follow(self, index: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                (self.counts[index],) = COUNT.unpack(await process.stdout.readexactly(COUNT.size))
                self.progress.set()
        except asyncio.IncompleteReadError:
            await process.wait()  # so that _until sees it ended
            self.progress.set()

    def check(self) -> None:
        if any(process.returncode is not None for process in self.processes):
            raise RuntimeError("a console reader ended early (dropped, or see its error above)")

    async def next_report(self) -> None:
        """Until a reader reports (``progress`` must have been cleared before looking)."""
        await asyncio.wait_for(self.progress.wait(), 30)
        self.check()

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.progress.clear()
            self.check()
            await self.next_report()

    async def wait_for(self, total: int) -> None:
        await asyncio.wait_for(self._until(lambda: min(self.counts) >= total), 30)

    async def stop(self) -> None:
        """After the helper stopped: readers end on their own; anything left is killed."""
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _produce(
    guest_write: Callable[[bytes], None],
    data: bytes,
    readers: Readers,
    base: int,
    seconds: float,
    one_write_per_read: bool,
) -> int:
    """Guest output for ``seconds``, ``WINDOW_BYTES`` ahead of the slowest reader at most;
    returns the bytes written. Writes in whole ACK_BYTES blocks, so the last report is exact."""
    block = ACK_BYTES // WRITE_BYTES
    produced = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        readers.progress.clear()
        while (
            produced - (min(readers.counts) - base) + ACK_BYTES <= WINDOW_BYTES
            and time.perf_counter() < deadline
        ):
            for _ in range(block):
                guest_write(data)
                if one_write_per_read:
                    await asyncio.sleep(0)
            produced += ACK_BYTES
        await readers.next_report()
    return produced


async def _hub_throughput(
    config_path: str,
    socket_path: str,
    clients: int,
    seconds: float,
    one_write_per_read: bool,
    recording_bytes: int | None,
    data: bytes,
) -> float:
    readers = Readers()
    try:
        async with helper_in_process(config_path, recording_bytes) as backend:
            guest = backend._by_name[DOMAIN].guest  # the sim guest's serial port
            await readers.start(socket_path, clients)
            warm = await _produce(
                guest._write, data, readers, 0, WARMUP_SECONDS, one_write_per_read
            )
            await readers.wait_for(warm)
            started = time.perf_counter()
            produced = await _produce(
                guest._write, data, readers, warm, seconds, one_write_per_read
            )
            await readers.wait_for(warm + produced)
            elapsed = time.perf_counter() - started
    finally:
        await readers.stop()  # the helper has stopped: they are ending
    return produced / elapsed / MIB


def hub_throughput(
    helper: Helper, clients: int, seconds: float, one_write_per_read: bool, data: bytes
) -> tuple[float, int]:
    """MiB/s that every one of ``clients`` received (the aggregate is ``clients`` times it),
    and the size of the largest recording (0 with recordings off), checked to have run to
    its end (``check_recordings``)."""
    recordings = recordings_directory(helper)
    rate = asyncio.run(
        _hub_throughput(
            str(helper.config),
            str(helper.socket),
            clients,
            seconds,
            one_write_per_read,
            RECORDING_BYTES if recordings else None,
            data,
        )
    )
    return rate, check_recordings(recordings, clients) if recordings else 0


def recordings_directory(helper: Helper) -> str | None:
    """Where ``helper`` records console sessions; None if it does not."""
    from vpsshell.daemon.config import load_config

    config = load_config(str(helper.config))
    return config.recordings_path if config.console_recordings else None


def check_recordings(directory: str, clients: int) -> int:
    """The size of the last run's recording (one for all ``clients``), which must have ended;
    then its files are removed, so that runs do not fill the disk."""
    from vpsshell.recording_format import list_directory

    found = list_directory(directory)
    if len(found) != 1 or found[0].ended is None:
        raise RuntimeError(f"{len(found)} recordings, or one not ended, in {directory}")
    size = found[0].size
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    return size


# -- keystroke round trips through a real vpsshelld ----------------------------------------


def start_and_log_in(helper: Helper) -> ConsoleConnection:
    client = HelperClient(str(helper.socket))
    try:
        client.call("start", {"domain": DOMAIN})
        wait_until(
            lambda: client.call("status", {"domain": DOMAIN})["state"] == "running",
            15,
            f"{DOMAIN} never came up",
        )
    finally:
        client.close()
    console = ConsoleConnection(str(helper.socket), "console", DOMAIN)
    console.type(b"\r")
    console.read_until(b"login: ")
    console.type(b"bench\r")
    console.read_until(b"Password: ")
    console.type(b"x\r")
    console.read_until(b"$ ")
    return console


def hub_round_trips(console: ConsoleConnection, keys: int, warmup: int) -> list[float]:
    samples: list[float] = []
    for index in range(warmup + keys):
        key, echo = KEYS[index % 2]
        started = time.perf_counter()
        console.type(key)
        got = b""
        while len(got) < len(echo):
            frame_type, payload = console.next_frame()
            if frame_type == protocol.FRAME_CONSOLE_DATA:
                got += payload
        elapsed = time.perf_counter() - started
        if got != echo:
            raise RuntimeError(f"console echo: expected {echo!r}, got {got!r}")
        if index >= warmup:
            samples.append(elapsed)
    return samples


def start_watchers(helper: Helper, count: int, watchers: list[subprocess.Popen[bytes]]) -> None:
    """``count`` more watcher processes, attached and reading, appended to ``watchers``."""
    for _ in range(count):
        watcher = subprocess.Popen(
            reader_command(str(helper.socket), "watch"), stdout=subprocess.PIPE
        )
        watchers.append(watcher)
        assert watcher.stdout is not None
        if watcher.stdout.read(COUNT.size) != COUNT.pack(0):
            raise RuntimeError("a watcher could not attach")


def stop_watchers(watchers: list[subprocess.Popen[bytes]]) -> None:
    """After the helper stopped (they end on their own); anything left is killed."""
    for watcher in watchers:
        try:
            watcher.wait(5)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()


# -- report --------------------------------------------------------------------------------

THROUGHPUT_RUNS = (
    # (label, clients, one guest write per hub read)
    ("hub -> 1 client, coalesced", 1, False),
    ("hub -> 1 client, 4 KiB reads", 1, True),
    ("hub -> 10 clients, coalesced (each)", 10, False),
    ("hub -> 10 clients, 4 KiB reads (each)", 10, True),
)
RAW_PTY = "raw pty, master -> raw slave"
LATENCY_RUNS = (("vpsshelld + sim guest", 0), ("vpsshelld + sim guest, 10 watchers", 10))
RECORDING_STATES = ("off", "on")  # console_recordings = false / true, same helper otherwise
# Per recording in the "on" runs, instead of the default 8 MiB at which a recording stops: a
# coalesced run sends over 1 GiB.
RECORDING_BYTES = 1 << 40


def run_label(label: str, recording: str) -> str:
    return f"{label}, rec {recording}"


def measure_throughput(
    helpers: dict[str, Helper], seconds: float, rounds: int, data: bytes
) -> tuple[dict[str, list[float]], int]:
    """MiB/s per run, and the largest recording made. The runs are interleaved, so every round
    sees the same machine load; recording off and on run back to back for each variant, in
    turns first, so that neither always follows the other."""
    results: dict[str, list[float]] = {RAW_PTY: []}
    largest = 0
    for round_number in range(rounds):
        results[RAW_PTY].append(pty_throughput(seconds))
        for label, clients, one_each in THROUGHPUT_RUNS:
            order = RECORDING_STATES if round_number % 2 == 0 else RECORDING_STATES[::-1]
            for recording in order:
                rate, recorded = hub_throughput(
                    helpers[recording], clients, seconds, one_each, data
                )
                results.setdefault(run_label(label, recording), []).append(rate)
                largest = max(largest, recorded)
    return results, largest


def cpu_seconds(pid: int) -> float:
    """Time ``pid`` has spent on a CPU (user and system), in ns resolution (sched-stats.rst)."""
    with open(f"/proc/{pid}/schedstat") as handle:
        return int(handle.read().split()[0]) / 1e9


def measure_latency(
    helper: Helper, keys: int, warmup: int
) -> list[tuple[str, list[float], float | None]]:
    """(label, round-trip seconds, helper CPU seconds per key or None) for each run."""
    runs: list[tuple[str, list[float], float | None]] = [
        ("raw pty + echo process", pty_round_trips(keys, warmup), None)
    ]
    console: ConsoleConnection | None = None
    watchers: list[subprocess.Popen[bytes]] = []
    try:
        helper.start()
        assert helper.process is not None
        console = start_and_log_in(helper)
        for label, count in LATENCY_RUNS:
            start_watchers(helper, count, watchers)
            before = cpu_seconds(helper.process.pid)
            samples = hub_round_trips(console, keys, warmup)
            used = cpu_seconds(helper.process.pid) - before
            runs.append((label, samples, used / (keys + warmup)))
    finally:
        if console is not None:
            console.close()
        helper.stop()
        stop_watchers(watchers)
    return runs


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples) * 1000, cuts[98] * 1000


def report_throughput(results: dict[str, list[float]]) -> None:
    raw = results[RAW_PTY]
    clients = {
        run_label(label, recording): count
        for label, count, _ in THROUGHPUT_RUNS
        for recording in RECORDING_STATES
    }
    print(
        f"\n  {'throughput, median of rounds (MiB/s)':<48} {'per client':>10} "
        f"{'all clients':>11} {'range':>10} {'of raw':>6}"
    )
    shares = {}
    for label in [RAW_PTY, *clients]:
        values = results[label]
        shares[label] = statistics.median(v / r for v, r in zip(values, raw, strict=True))
        median = statistics.median(values)
        spread = f"{min(values):.0f}-{max(values):.0f}"
        total = median * clients.get(label, 1)
        print(f"  {label:<48} {median:10.1f} {total:11.1f} {spread:>10} {shares[label]:6.0%}")
    worst = min(share for label, share in shares.items() if clients.get(label) == 1)
    verdict = "met" if worst >= TARGET_THROUGHPUT_SHARE else "MISSED"
    print(
        f"  target: 1 client >= {TARGET_THROUGHPUT_SHARE:.0%} of raw pty "
        f"(worst run: {worst:.0%}): {verdict}"
    )


def report_recording_cost(results: dict[str, list[float]], largest: int) -> None:
    """Recording on / off per variant: the median of each round's ratio (the two runs of a
    round are back to back), and the range over the rounds."""
    print(
        f"\n  {'recording on / off (per client, MiB/s)':<40} {'off':>8} {'on':>8} "
        f"{'on/off':>7} {'range':>11}"
    )
    worst = float("inf")
    for label, _, _ in THROUGHPUT_RUNS:
        off, on = (results[run_label(label, recording)] for recording in RECORDING_STATES)
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        ratio = statistics.median(ratios)
        worst = min(worst, ratio)
        spread = f"{min(ratios):.0%}-{max(ratios):.0%}"
        print(
            f"  {label:<40} {statistics.median(off):8.1f} {statistics.median(on):8.1f} "
            f"{ratio:7.0%} {spread:>11}"
        )
    verdict = "met" if worst >= 1 - TARGET_RECORDING_COST else "MISSED"
    print(
        f"  target: recording on >= {1 - TARGET_RECORDING_COST:.0%} of off "
        f"(worst variant: {worst:.0%}): {verdict}"
    )
    print(
        f"  (per-recording cap raised to {RECORDING_BYTES / MIB:.0f} MiB for these runs; "
        f"largest recording {largest / MIB:.0f} MiB, every one ran to its end marker)"
    )


def report_latency(runs: list[tuple[str, list[float], float | None]], keys: int) -> None:
    title = f"keystroke round trip ({keys} keys)"
    print(f"\n  {title:<42} {'p50 ms':>8} {'p99 ms':>8} {'helper CPU/key':>15}")
    base50, base99 = percentiles_ms(runs[0][1])
    for label, samples, cpu in runs:
        p50, p99 = percentiles_ms(samples)
        cpu_text = f"{cpu * 1e6:.0f} us" if cpu is not None else ""
        print(f"  {label:<42} {p50:8.3f} {p99:8.3f} {cpu_text:>15}")
        if cpu is not None:
            print(f"  {'  added by the helper':<42} {p50 - base50:8.3f} {p99 - base99:8.3f}")
    # Two tails of a few dozen samples each are noisy, and their difference can even come out
    # negative; the verdict charges the helper with its whole tail over a typical pty key.
    _, alone_p99 = percentiles_ms(runs[1][1])
    worst = alone_p99 - base50
    verdict = "met" if worst < TARGET_ADDED_P99_MS else "MISSED"
    print(
        f"  target: added p99 < {TARGET_ADDED_P99_MS:g} ms with one client "
        f"(helper p99 - pty p50 = {worst:.3f} ms): {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--keys", type=int, default=5000, help="timed keys per latency run")
    parser.add_argument(
        "--output",
        choices=sorted(GUEST_WRITES),
        default="text",
        help="what the guest prints in the throughput runs",
    )
    parser.add_argument("--reader", nargs=3, metavar=("SOCKET", "OP", "DOMAIN"), help="internal")
    args = parser.parse_args(argv)
    if args.reader:
        return reader_main(*args.reader)
    logging.getLogger("vpsshell").setLevel(logging.ERROR)  # the in-process helper's chatter
    root = Path(tempfile.mkdtemp(prefix="vpsshell-bench-console-"))
    policy = f"allow user:{pwd.getpwuid(os.geteuid()).pw_name} @operator {DOMAIN}\n"
    try:
        print(
            f"console benchmark: {os.cpu_count()} cores; throughput: {args.rounds} x "
            f"{args.seconds:g} s per run; latency: {args.keys} keys per run"
        )
        # ten watchers of one user: more than the helper's default cap per user
        limits = "console_watchers_per_user = 16"
        helpers = {
            recording: Helper(
                root / f"in-process-rec-{recording}",
                policy,
                extra_config=f"console_recordings = {'true' if recording == 'on' else 'false'}",
                extra_limits=limits,
            )
            for recording in RECORDING_STATES
        }
        data = GUEST_WRITES[args.output]
        results, largest = measure_throughput(helpers, args.seconds, args.rounds, data)
        report_throughput(results)
        report_recording_cost(results, largest)
        separate = Helper(root / "vpsshelld", policy, extra_limits=limits)
        runs = measure_latency(separate, args.keys, args.keys // 10)
        report_latency(runs, args.keys)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
