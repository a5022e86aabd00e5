"""Benchmark: throughput. The helper's ``status`` rate against libvirtd's own ``dominfo``
(``virDomainGetInfo``), with 1, 8 and 64 concurrent connections, in the same run.

Each connection is a client process of its own, run as a tenant OS user of its own
(``vpsb-tp01``...; the helper's request budget is per user). Each opens one connection,
sends one request to warm it, and then, from one instant shared by all of them
(``CLOCK_MONOTONIC``), sends its request again as soon as the reply to the last one is in, for
``--seconds``. One client loop (``run_client``), one request function per side:

- ``libvirtd``: ``dom.info()`` on a libvirt-python connection, the domain looked up once
  before the loop: one RPC, what ``virsh dominfo`` reads state, vcpus and memory with;
- ``libvirtd-by-name``: ``conn.lookupByName(DOMAIN).info()``, two RPCs: a status by name from
  a client that keeps no handle, which is what the helper is asked for;
- ``helper-libvirt``: ``status DOMAIN`` through ``vpsshell.client.HelperClient`` (the client
  of ``vpsshell -c``) to a real ``vpsshelld`` whose backend is the libvirt backend with that
  same libvirtd as its one host, so a status costs the helper libvirt calls as well (the
  backend resolves the name from its record of the host's domains and reads the domain by
  UUID: ``lookupByUUIDString`` and ``info``, the two RPCs of ``libvirtd-by-name``);
- ``helper-sim``: the same to a ``vpsshelld`` on the sim backend: the helper's own cost.

The libvirtd: by default one of the benchmark's own, the Debian ``libvirtd`` binary run as the
session daemon of a user of the benchmark's (``vpsb-tp-libvirtd``, its own runtime dirs and
config, as in the fleet tests) with a socket in the run's temp dir that every
user may use. The system ``libvirtd`` is not a service on the reference machine (the e2e tests
start one and stop it again), so starting or stopping it here would race with them. The domain
is the test driver's ``test`` (``test+unix:///default?socket=...``): the clients and the helper
ask the same driver instance of the same daemon for the same domain over the same RPC path, and
nothing is defined in a driver anyone else uses. ``--libvirt-socket PATH`` uses a running
daemon's socket instead (``/run/libvirt/libvirt-sock`` for the system one).

A fresh helper serves each phase (fresh rate-limit buckets), with PAM on as shipped and
``requests_per_minute = 100000``, the most the config accepts: a bucket of 25,000 requests and
1,667 a second after it per user, so a connection may make 30,000 requests in a 3 s phase
(10,000/s; in 5 s, 6,667/s, which the helper reaches with one connection on a quiet machine:
hence 3 s). The report says if any reply was "too many requests" (and then the limit, not the
helper, decided that row). The helper's audit log must hold exactly one ``status`` record per
request the clients sent (folded ``repeated`` counts included): the report checks that too.

Reported per N and side: requests/s (all connections together, replies in the window),
p50/p99 of one request (sent to reply, in the client), errors, the CPU share of the helper and
of libvirtd during the window (``/proc/PID/stat``, 100 % = one core) and of the whole machine,
and their CPU time per request; then the ratios helper/libvirtd. ``--rounds R`` runs every
phase R times, interleaved (who goes first changes every turn), and takes the ratios from the
median rates: the machine's other load moves single phases by a factor of two.
``--profile DIR`` also records the helper with py-spy (raw collapsed stacks of the threads on
CPU, ``PROFILE_RATE`` a second) in the phases with the most connections, and prints where its
event loop thread and its other threads spent their time (py-spy stops the helper for each
sample: the numbers of a profiled run are a little low).

    python bench/throughput.py [--connections 1,8,64] [--seconds 3] [--rounds 1]
                               [--sides ...] [--profile DIR] [--json FILE]

Run it as root from the test venv (``/var/tmp/vpsshell-test-venv/bin/python``); about a
minute a round. The same file is the clients' program (``--role client``, run with ``runuser``; it
needs libvirt-python and vpsshell, nothing else). It ends only processes it started and
removes its temp dir and (unless ``--keep-users``) its users.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
LIBVIRT_DOMAIN = "test"  # the test driver's running domain in test:///default
SIM_DOMAIN = "web1"
LIBVIRTD_USER = "vpsb-tp-libvirtd"
REQUESTS_PER_MINUTE = 100000  # the config's maximum
START_DELAY_SECONDS = 0.3  # from the last "ready" to the shared start
PROFILE_RATE = 200  # py-spy samples a second (it stops the helper for each)


class Side(NamedTuple):
    name: str
    helper_backend: str | None  # "libvirt" | "sim": a helper; None: libvirtd directly
    by_name: bool = False  # libvirtd: look the domain up by name in every request


SIDES = {
    side.name: side
    for side in (
        Side("libvirtd", None),
        Side("helper-libvirt", "libvirt"),
        Side("helper-sim", "sim"),
        Side("libvirtd-by-name", None, by_name=True),
    )
}


def tenant(number: int) -> str:
    return f"vpsb-tp{number:02d}"


# -- the client: one connection, one request after the other -----------------------------------


def helper_status(socket_path: str, domain: str) -> Callable[[], object]:
    """``status DOMAIN`` through the client ``vpsshell -c`` uses."""
    from vpsshell.client import HelperClient

    client = HelperClient(socket_path)
    args = {"domain": domain}
    return lambda: client.call("status", args)


def libvirt_info(uri: str, domain: str, by_name: bool) -> Callable[[], object]:
    """``virDomainGetInfo`` on one connection (after a lookup by name, if ``by_name``)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)  # raised, not printed
    conn = libvirt.open(uri)
    if by_name:
        return lambda: conn.lookupByName(domain).info()
    return conn.lookupByName(domain).info


def run_client(request: Callable[[], object]) -> None:
    """One warm-up request, ``ready``; then a line ``START SECONDS`` on stdin; then requests
    back to back from START (monotonic clock) for SECONDS; prints the latencies (µs) of those
    answered within the window, the error counts and how many requests were sent, as JSON."""
    request()
    print("ready", flush=True)
    start, seconds = (float(word) for word in sys.stdin.readline().split())
    end = start + seconds
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    sent = 1  # the warm-up
    time.sleep(max(0.0, start - time.monotonic()))
    while (began := time.monotonic()) < end:
        sent += 1
        try:
            request()
        except Exception as exc:  # a refusal or a libvirt error: counted, never timed
            errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            continue
        done = time.monotonic()
        if done <= end:
            latencies.append(round((done - began) * 1e6))
    print(json.dumps({"latencies_us": latencies, "errors": errors, "sent": sent}), flush=True)


# -- the libvirtd of the run -------------------------------------------------------------------


class PrivateLibvirtd:
    """``libvirtd`` as the session daemon of ``LIBVIRTD_USER``, in ``root``, its socket open to
    every user (``auth_unix_rw = "none"``: the socket's directory is the run's own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "sock" / "libvirt-sock"
        self.pid_file = root / "run" / "libvirtd.pid"
        self.log = root / "libvirtd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start it, wait until it answers; returns libvirtd's pid."""
        import pwd

        user = pwd.getpwnam(LIBVIRTD_USER)
        for name in ("home", "run", "config", "cache", "sock"):
            (self.root / name).mkdir(parents=True, mode=0o700 if name != "sock" else 0o755)
            os.chown(self.root / name, user.pw_uid, user.pw_gid)
        config = self.root / "libvirtd.conf"
        config.write_text(
            f'unix_sock_dir = "{self.socket.parent}"\n'
            'unix_sock_rw_perms = "0777"\nunix_sock_ro_perms = "0777"\n'
            'auth_unix_rw = "none"\nauth_unix_ro = "none"\n'
        )
        env = [f"HOME={self.root / 'home'}", f"XDG_RUNTIME_DIR={self.root / 'run'}"]
        env += [f"XDG_CONFIG_HOME={self.root / 'config'}", f"XDG_CACHE_HOME={self.root / 'cache'}"]
        self.process = subprocess.Popen(
            ["runuser", "-u", LIBVIRTD_USER, "--", "env", "-i", "PATH=/usr/bin:/bin", *env]
            + ["/usr/sbin/libvirtd", "--config", str(config), "--pid-file", str(self.pid_file)],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from harness import wait_until

        wait_until(lambda: answers(uri_of(self.socket)), 30, f"libvirtd never answered: {self.log}")
        return int(self.pid_file.read_text().split()[0])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # runuser and its libvirtd
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def uri_of(socket_path: Path) -> str:
    return f"test+unix:///default?socket={socket_path}"


def answers(uri: str) -> bool:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
    try:
        libvirt.open(uri).close()
        return True
    except libvirt.libvirtError:
        return False


def libvirtd_pid(socket_path: Path) -> int | None:
    """The pid of the daemon listening on ``socket_path`` (for its CPU share), if it can be
    found: the peer of a connection to it."""
    import socket as sockets

    from vpsshell.daemon.peer import peer_credentials

    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket_path))
            return peer_credentials(probe)[0]
        except OSError:
            return None


# -- the coordinator (root) --------------------------------------------------------------------


def helper_for(root: Path, side: Side, users: list[str], uri: str) -> Any:
    """A ``vpsshelld`` (tests/harness.py ``Helper``) for ``side``, granting ``status`` on the
    side's domain to each of ``users``, one rule each, as a provider grants tenants."""
    from harness import Helper

    domain = LIBVIRT_DOMAIN if side.helper_backend == "libvirt" else SIM_DOMAIN
    policy = "".join(f"allow user:{user} @viewer {domain}\n" for user in users)
    helper = Helper(
        root,
        policy=policy,
        requests_per_minute=REQUESTS_PER_MINUTE,
        connections_per_minute=REQUESTS_PER_MINUTE,
    )
    if side.helper_backend == "libvirt":
        config = helper.config.read_text()
        backend = (
            f'[backend]\ntype = "libvirt"\n\n[[backend.hosts]]\nname = "node1"\nuri = "{uri}"\n'
        )
        helper.config.write_text(config[: config.index("[backend]")] + backend)
    return helper


def as_user(user: str, *argv: str) -> list[str]:
    """This file, run as ``user`` with the same (isolated) Python."""
    return ["runuser", "-u", user, "--", sys.executable, "-I", str(Path(__file__).resolve()), *argv]


def audited_status(records: list[dict[str, Any]]) -> int:
    """``status`` requests in the audit log, those folded into a ``repeated`` count too."""
    return sum(
        1 + int(record.get("repeated", 0)) for record in records if record.get("action") == "status"
    )


def run_phase(
    side: Side, count: int, args: argparse.Namespace, root: Path, uri: str, daemon_pid: int | None
) -> dict[str, Any]:
    from fairness import cpu_ticks, host_cpu, percentile

    users = [tenant(n) for n in range(1, count + 1)]
    helper = None
    if side.helper_backend is not None:
        helper = helper_for(root / f"{side.name}-{count}", side, users, uri).start()
        domain = LIBVIRT_DOMAIN if side.helper_backend == "libvirt" else SIM_DOMAIN
        target = ["--socket", str(helper.socket), "--domain", domain]
    else:
        target = ["--uri", uri, "--domain", LIBVIRT_DOMAIN] + (
            ["--by-name"] if side.by_name else []
        )
    clients: list[subprocess.Popen[str]] = []
    profiler: subprocess.Popen[bytes] | None = None
    try:
        for user in users:
            clients.append(
                subprocess.Popen(
                    as_user(user, "--role", "client", *target),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "ready":
                client.kill()
                raise RuntimeError(f"{side.name}: a client did not start: {client.stderr.read()}")
        start = time.monotonic() + START_DELAY_SECONDS
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(f"{start!r} {args.seconds!r}\n")
            client.stdin.flush()
        helper_pid = helper.process.pid if helper is not None else None
        profile_file = None
        if args.profile and helper_pid is not None and count == max(args.connections):
            profile_file = Path(args.profile) / f"{side.name}-{count}.txt"
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(helper_pid)]
                + ["--duration", str(int(args.seconds)), "--rate", str(PROFILE_RATE)]
                + ["--format", "raw", "--threads", "--output", str(profile_file)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(max(0.0, start - time.monotonic()))
        pids = {"helper": helper_pid, "libvirtd": daemon_pid}
        before = {name: cpu_ticks(pid) for name, pid in pids.items() if pid is not None}
        host_before = host_cpu()
        time.sleep(max(0.0, start + args.seconds - time.monotonic()))
        after = {name: cpu_ticks(pid) for name, pid in pids.items() if pid is not None}
        host_after = host_cpu()
        latencies: list[int] = []
        errors: Counter[str] = Counter()
        sent = 0
        for client in clients:
            out, err = client.communicate(timeout=args.seconds + 60)
            if client.returncode != 0:
                raise RuntimeError(f"{side.name}: a client failed: {err[-2000:]}")
            result = json.loads(out.strip().splitlines()[-1])
            latencies += result["latencies_us"]
            errors.update(result["errors"])
            sent += result["sent"]
        if profiler is not None:
            profiler.wait(timeout=30)
    finally:
        for client in clients:
            if client.poll() is None:
                os.killpg(client.pid, signal.SIGKILL)
                client.wait()
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait()
        if helper is not None:
            helper.stop()
    latencies.sort()
    ticks = os.sysconf("SC_CLK_TCK")
    result = {
        "side": side.name,
        "connections": count,
        "requests": len(latencies),
        "rate": len(latencies) / args.seconds,
        "seconds": args.seconds,
        "sent": sent,
        "errors": dict(errors),
        "cpu": {name: (after[name] - before[name]) / ticks / args.seconds for name in before},
        "host_busy": (host_after[0] - host_before[0]) / max(1, host_after[1] - host_before[1]),
    }
    if latencies:
        result["p50_ms"] = percentile(latencies, 0.50) / 1000
        result["p99_ms"] = percentile(latencies, 0.99) / 1000
    if helper is not None:
        result["audited"] = audited_status(helper.audit())
        if not args.keep_dir:
            shutil.rmtree(helper.root, ignore_errors=True)
    if profile_file is not None:
        result["profile"] = str(profile_file)
    return result


def coordinate(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]
    from fairness import ensure_user, remove_user

    if os.geteuid() != 0:
        print("run as root: the tenants are real OS users", file=sys.stderr)
        return 2
    users = [tenant(n) for n in range(1, max(args.connections) + 1)]
    for user in [*users, LIBVIRTD_USER]:
        ensure_user(user)
    pam_file = Path("/etc/pam.d/vpsshell")
    if not pam_file.exists():  # the helper's PAM service, as `vpsshell-admin install` sets up
        shutil.copy(BENCH.parent / "pam" / "vpsshell", pam_file)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="vpsshell-throughput-"))
    os.chmod(root, 0o755)
    daemon = None
    results: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        if args.libvirt_socket:
            socket_path = Path(args.libvirt_socket)
            daemon_pid = libvirtd_pid(socket_path)
        else:
            daemon = PrivateLibvirtd(root / "libvirtd")
            daemon_pid = daemon.start()
            socket_path = daemon.socket
        uri = uri_of(socket_path)
        print(
            f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in load_before)}; "
            f"{args.seconds:g} s a phase; libvirtd {uri} (pid {daemon_pid}); helper: "
            f"requests_per_minute = {REQUESTS_PER_MINUTE} per user (each connection its own "
            f"user: {REQUESTS_PER_MINUTE // 4} at once, then {REQUESTS_PER_MINUTE / 60:.0f}/s)",
            flush=True,
        )
        turn = 0
        for _ in range(args.rounds):
            for count in args.connections:  # who goes first changes from turn to turn
                shift = turn % len(args.sides)
                turn += 1
                for name in args.sides[shift:] + args.sides[:shift]:
                    result = run_phase(SIDES[name], count, args, root, uri, daemon_pid)
                    results.append(result)
                    print(f"  {count:3d} x {name}: {result['rate']:.0f}/s", flush=True)
    finally:
        if daemon is not None:
            daemon.stop()
        if args.keep_dir:
            print(f"the run's files are kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        if not args.keep_users:
            for user in [*users, LIBVIRTD_USER]:
                remove_user(user)
    report(results, args, load_before)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _cpu(result: dict[str, Any], name: str) -> str:
    share = result["cpu"].get(name)
    return "-" if share is None else f"{share * 100:.0f} %"


def _per_request(result: dict[str, Any]) -> str:
    """CPU time of the helper and of libvirtd per request answered in the window."""
    if not result["requests"]:
        return ""
    shares = [
        f"{name} {share * result['seconds'] / result['requests'] * 1e6:.0f}"
        for name, share in result["cpu"].items()
        if share > 0.005
    ]
    return ", ".join(shares)


def _median_rates(results: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(side, connections) -> the median of its rounds' request rates."""
    rounds: dict[tuple[str, int], list[float]] = {}
    for result in results:
        rounds.setdefault((result["side"], result["connections"]), []).append(result["rate"])
    return {key: statistics.median(rates) for key, rates in rounds.items()}


def report(results: list[dict[str, Any]], args: argparse.Namespace, load_before: Any) -> None:
    print()
    print(f"status / dominfo, {args.seconds:g} s a phase; latency of one request in ms")
    print(
        f"  {'conns':>5}  {'side':<17} {'req/s':>8} {'p50':>7} {'p99':>7}  {'errors':>6}  "
        f"{'helper CPU':>10}  {'libvirtd CPU':>12}  {'host busy':>9}  CPU per request (µs)"
    )
    for result in results:
        latency = (
            f"{result['p50_ms']:7.2f} {result['p99_ms']:7.2f}" if "p50_ms" in result else " " * 15
        )
        print(
            f"  {result['connections']:5d}  {result['side']:<17} {result['rate']:8.0f} {latency}"
            f"  {sum(result['errors'].values()):6d}  {_cpu(result, 'helper'):>10}  "
            f"{_cpu(result, 'libvirtd'):>12}  {result['host_busy'] * 100:7.0f} %  "
            f"{_per_request(result)}"
        )
    print()
    rates = _median_rates(results)
    against = (("helper-libvirt", "libvirtd"), ("helper-sim", "libvirtd"))
    against += (("helper-libvirt", "libvirtd-by-name"),)
    for count in args.connections:
        ratios = [
            f"{side}/{peer} {rates[(side, count)] / rates[(peer, count)]:.2f}"
            for side, peer in against
            if rates.get((peer, count)) and (side, count) in rates
        ]
        if ratios:
            rounds = " (medians of the rounds)" if args.rounds > 1 else ""
            print(f"  {count:3d} connections{rounds}: {', '.join(ratios)}")
    for result in results:
        where = f"{result['side']} x {result['connections']}"
        for label, times in result["errors"].items():
            print(f"  {where}: {times} x {label}")
        if any("too many requests" in label for label in result["errors"]):
            print("    (the rate limit decided this row, not the helper)")
        if "audited" in result and result["audited"] != result["sent"]:
            print(
                f"  {where}: {result['sent']} requests sent, {result['audited']} status "
                "requests in the audit log: NOT ONE LINE A REQUEST"
            )
    audited = [r for r in results if "audited" in r]
    if audited and all(r["audited"] == r["sent"] for r in audited):
        print(
            f"  audit log: one status record per request sent, in all {len(audited)} helper phases"
        )
    most = max(args.connections)
    target = [r for r in results if r["side"] == "helper-libvirt" and r["connections"] == most]
    if target and rates.get(("libvirtd", most)):
        p99 = statistics.median(r.get("p99_ms", math.inf) for r in target)
        print(
            f"  target at {most} connections (parity with libvirtd, p99 under 10 ms): ratio "
            f"{rates[('helper-libvirt', most)] / rates[('libvirtd', most)]:.2f}, p99 {p99:.2f} ms"
        )
    print(
        f"  load average before {' '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    for result in results:
        if "profile" in result:
            print()
            print(f"{result['side']} x {result['connections']}: py-spy, {result['profile']}")
            print(profile_summary(Path(result["profile"]), PROFILE_RATE, int(args.seconds)))


def profile_summary(path: Path, rate: int, seconds: float, top: int = 20) -> str:
    """What the helper's threads did, from a py-spy raw (collapsed) file of on-CPU samples:
    the event loop thread's busy share and its top frames (with all they called, and as the
    innermost frame), then the other threads' top innermost frames."""
    loop: Counter[str] = Counter()
    loop_own: Counter[str] = Counter()
    others: Counter[str] = Counter()
    threads: set[str] = set()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")  # "thread (TID): NAME", then outermost first
        threads.add(thread)
        innermost = frames[-1] if frames else "(no Python frame yet)"
        if thread.endswith(": MainThread"):  # where vpsshelld runs its event loop
            for frame in set(frames):
                loop[frame] += int(count)
            loop_own[innermost] += int(count)
        else:  # named by what they are for (libvirt-HOST-CALL, libvirt-events...)
            others[f"{thread.partition(': ')[2]}: {innermost}"] += int(count)
    possible = rate * seconds
    loop_total, other_total = loop_own.total(), others.total()
    lines = [
        f"  event loop thread: on CPU in {loop_total} of {possible:.0f} samples "
        f"({100 * loop_total / possible:.0f} %); with what they called:"
    ]
    lines += [f"    {100 * n / possible:5.1f} %  {frame}" for frame, n in loop.most_common(top)]
    lines += ["  innermost frames:"]
    lines += [f"    {100 * n / possible:5.1f} %  {frame}" for frame, n in loop_own.most_common(top)]
    lines += [
        f"  {len(threads) - 1} other threads: on CPU in {other_total} samples "
        f"({100 * other_total / possible:.0f} % of a core); innermost frames:"
    ]
    lines += [
        f"    {100 * n / possible:5.1f} %  {frame}" for frame, n in others.most_common(top // 2)
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="each phase")
    parser.add_argument("--rounds", type=int, default=1, help="every phase this many times")
    parser.add_argument(
        "--connections", type=lambda text: [int(n) for n in text.split(",")], default=[1, 8, 64]
    )
    parser.add_argument(
        "--sides",
        type=lambda text: text.split(","),
        default=list(SIDES),
        help=f"comma-separated, of {', '.join(SIDES)}",
    )
    parser.add_argument("--libvirt-socket", help="a running libvirtd's socket instead of our own")
    parser.add_argument("--profile", help="py-spy the helper at the most connections, into DIR")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--keep-users", action="store_true")
    parser.add_argument("--keep-dir", action="store_true", help="keep the helpers' files")
    # the clients' side of this file (run as the tenants)
    parser.add_argument("--role", choices=("client",), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--domain", help=argparse.SUPPRESS)
    parser.add_argument("--by-name", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "client":
        if args.socket:
            run_client(helper_status(args.socket, args.domain))
        else:
            run_client(libvirt_info(args.uri, args.domain, args.by_name))
        return 0
    unknown = set(args.sides) - set(SIDES)
    if unknown:
        parser.error(f"unknown side(s): {', '.join(sorted(unknown))}")
    return coordinate(args)


if __name__ == "__main__":
    sys.exit(main())
