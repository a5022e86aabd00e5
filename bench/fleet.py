"""Benchmark: a gateway over 20 libvirt hosts: helper start-up, a tenant's list and status, memory.

A test fleet (``tests/fleet/fleetlab.py``) of ``--hosts`` test-driver hosts with ``--domains``
domains each, every host its own libvirtd in its own network namespace, reached over TLS
(client certificate, ``qemu+tls``-style URIs: ``test+tls://IP/PATH/node.xml?pkipath=...``).
A real ``vpsshelld`` (``harness.Helper``) runs on the gateway side with the libvirt backend
naming every host and the backend's default timeouts and keepalives; its policy grants one
tenant (``vpsb-fleet``, a real OS user) ``@operator`` on ``--own`` domains spread over as many
hosts. Measured:

- **start-up**: from just before ``vpsshelld`` is started to the first ``list`` the helper
  answers the tenant, and to the first ``list`` in which every one of the tenant's domains has
  a known state (not ``unknown``), both seen by a client of the tenant that asks from before
  the helper starts (one process, its own ``list`` requests, 10 ms apart once answered);
  the helper's CPU time until then;
- **one command per process**: ``vpsshell -c list`` and ``vpsshell -c 'status DOMAIN'`` (the
  tenant's domains in turn) run as the tenant, a new process each as sshd starts one per
  ``ssh gateway COMMAND``, interleaved, ``--runs`` of each: p50, p99, max;
- **open connection**: the same requests from the tenant's own client on one connection
  (``vpsshell.client.HelperClient``), ``--requests`` of each, interleaved;
- **in helper**: ``duration_ms`` of the tenant's requests in the audit log (request read to
  audit line), for both ways above;
- **memory**: the helper's ``VmRSS`` after the runs, its peak ``VmHWM``, its threads.

``--frozen N`` stops (SIGSTOP) the libvirtd of N hosts that hold none of the tenant's domains
before the helper starts and for the whole run: a new connection to them gets no answer at all
(TCP connects, TLS never completes), which shows what one hung host costs everybody else.

    python bench/fleet.py [--hosts 20] [--domains 50] [--own 5] [--runs 50] [--requests 500]
                          [--frozen 0] [--json FILE] [--keep-users]

Run it as root from the test venv (``/var/tmp/vpsshell-test-venv/bin/python``); about a
minute. The same file is the tenant's programs (``--role probe|loop``, run with ``runuser``).
It never touches the system's helper, policy or logs; the fleet removes everything it made
(namespaces, bridge, host users, daemons), and the tenant is removed unless ``--keep-users``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
TENANT = "vpsb-fleet"
PROBE_SECONDS = 120.0  # start-up that takes longer is reported as not complete
UNKNOWN = "unknown"  # the state of a domain whose host the helper cannot reach (yet)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of the samples at or below."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }


# -- the tenant's programs (run as the tenant) -------------------------------------------------


def run_probe(socket_path: str, names: list[str]) -> None:
    """Ask ``list`` until the helper answers, then until all of ``names`` have a known state;
    print when (CLOCK_MONOTONIC, the same for every process) and what the first answer said."""
    from vpsshell.client import HelperClient
    from vpsshell.errors import VpsError

    print("ready", flush=True)
    deadline = time.monotonic() + PROBE_SECONDS
    first: float | None = None
    first_states: dict[str, str] = {}
    complete: float | None = None
    asked = 0
    while complete is None and time.monotonic() < deadline:
        client = HelperClient(socket_path)
        try:
            listed = client.call("list", {}, timeout=PROBE_SECONDS)
        except VpsError:  # no socket yet, or not answering yet
            time.sleep(0.002)
            continue
        finally:
            client.close()
        now = time.monotonic()
        asked += 1
        states = {str(domain["name"]): str(domain["state"]) for domain in listed}
        if first is None:
            first, first_states = now, states
        if all(states.get(name, UNKNOWN) != UNKNOWN for name in names):
            complete = now
        else:
            time.sleep(0.01)
    print(
        json.dumps({"first": first, "complete": complete, "states": first_states, "asked": asked})
    )


def run_loop(socket_path: str, names: list[str], requests: int) -> None:
    """``list`` and ``status NAME`` (each of ``names`` in turn), interleaved, on one
    connection; print the round trips in ms."""
    from vpsshell.client import HelperClient

    client = HelperClient(socket_path)
    samples: dict[str, list[float]] = {"list": [], "status": []}
    for number in range(requests):
        for op, call_args in (("list", {}), ("status", {"domain": names[number % len(names)]})):
            began = time.perf_counter()
            client.call(op, call_args, timeout=30)
            samples[op].append((time.perf_counter() - began) * 1000)
    client.close()
    print(json.dumps(samples))


# -- the coordinator (root) --------------------------------------------------------------------


def ensure_tenant() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TENANT)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/false", TENANT], check=True)
        return pwd.getpwnam(TENANT)


def as_tenant(*argv: str) -> list[str]:
    """This file, run as the tenant with the same (isolated) Python."""
    return ["runuser", "-u", TENANT, "--", sys.executable, "-I", os.path.abspath(__file__), *argv]


def spread(hosts: int, domains: int, own: int) -> list[str]:
    """``own`` domains on ``own`` different hosts, spread over the fleet and over the hosts'
    domain numbers (so both running and shut-off ones)."""
    if own > hosts:
        raise SystemExit(f"--own {own} needs at least as many hosts (--hosts {hosts})")
    return [f"h{1 + k * hosts // own:02d}-d{1 + (7 * k + 3) % domains:03d}" for k in range(own)]


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_helper(records: list[dict[str, Any]], uid: int) -> dict[str, Any]:
    """The tenant's ``list``/``status`` as the helper timed them (audit ``duration_ms``)."""
    result = {}
    for action in ("list", "status"):
        durations = [
            float(r["duration_ms"])
            for r in records
            if r.get("uid") == uid and r.get("action") == action and r.get("result") == "ok"
        ]
        result[action] = summary(durations) if durations else {"n": 0}
    return result


def time_commands(
    tenant: pwd.struct_passwd, socket_path: str, names: list[str], runs: int
) -> dict[str, list[float]]:
    """``vpsshell -c`` as the tenant, a process per command; ms per command."""
    from harness import BIN

    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/", "VPSSHELL_SOCKET": socket_path}

    def vpsshell(line: str) -> tuple[float, str]:
        began = time.perf_counter()
        done = subprocess.run(
            [str(BIN / "vpsshell"), "-c", line],
            user=tenant.pw_uid,
            group=tenant.pw_gid,
            extra_groups=[],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        elapsed = (time.perf_counter() - began) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"vpsshell -c {line!r}: {done.returncode} {done.stderr.strip()}")
        return elapsed, done.stdout

    _, listed = vpsshell("list --json")  # the tenant sees exactly its own domains
    seen = sorted(domain["name"] for domain in json.loads(listed))
    if seen != sorted(names):
        raise RuntimeError(f"the tenant lists {seen}, not its domains {sorted(names)}")
    samples: dict[str, list[float]] = {"list": [], "status": []}
    for number in range(runs):
        samples["list"].append(vpsshell("list")[0])
        samples["status"].append(vpsshell(f"status {names[number % len(names)]}")[0])
    return samples


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path[:0] = [str(TESTS), str(TESTS / "fleet")]
    from fleetlab import FleetLab, host_specs
    from harness import Helper

    tenant = ensure_tenant()
    pam_file = Path("/etc/pam.d/vpsshell")
    if not pam_file.exists():  # the helper's PAM service, as `vpsshell-admin install` sets up
        shutil.copy(TESTS.parent / "pam" / "vpsshell", pam_file)
    names = spread(args.hosts, args.domains, args.own)
    results: dict[str, Any] = {
        "hosts": args.hosts,
        "domains_per_host": args.domains,
        "own_domains": names,
        "frozen_hosts": args.frozen,
        "cores": os.cpu_count(),
        "load_before": os.getloadavg()[0],
    }
    specs = host_specs(test=args.hosts, domains=args.domains)
    with FleetLab(specs, name="vpsshell-bench-fleet") as lab:
        results["lab_start_s"] = lab.start_seconds
        owners = {name.split("-")[0] for name in names}
        idle = [host for host in lab.hosts if f"h{host.index:02d}" not in owners]
        if args.frozen > len(idle):
            raise SystemExit(f"--frozen {args.frozen}: only {len(idle)} hosts hold no own domain")
        for host in idle[len(idle) - args.frozen :]:
            host.freeze()  # the fleet's close() ends them as they are
        root = Path(tempfile.mkdtemp(prefix="vpsshell-bench-fleet-helper-"))
        os.chmod(root, 0o755)
        helper = Helper(
            root / "helper", policy=f"allow user:{TENANT} @operator {' '.join(names)}\n"
        )
        lab.configure(helper)
        # the tenant's own group owns the socket from its first moment, so the probe is let in
        # as soon as the helper listens (Helper.start opens it to everyone only afterwards)
        config = helper.config.read_text()
        start_of_group = config.index("socket_group = ")
        end_of_group = config.index("\n", start_of_group)
        group = f'socket_group = "{TENANT}"'
        helper.config.write_text(config[:start_of_group] + group + config[end_of_group:])
        socket_path = str(helper.socket)
        probe = subprocess.Popen(
            as_tenant("--role", "probe", "--socket", socket_path, *names),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert probe.stdout is not None
            if probe.stdout.readline().strip() != "ready":  # asking before the helper starts
                raise RuntimeError(f"the probe did not start: {probe.stderr.read()[-2000:]}")
            started = time.monotonic()
            helper.start()
            assert helper.process is not None
            pid = helper.process.pid
            out, err = probe.communicate(timeout=PROBE_SECONDS + 30)
            if probe.returncode != 0:
                raise RuntimeError(f"the probe failed: {err[-2000:]}")
            seen = json.loads(out)
            results["helper_cpu_at_complete_s"] = cpu_seconds(pid)
            results["first_list_s"] = seen["first"] - started if seen["first"] else None
            results["complete_list_s"] = seen["complete"] - started if seen["complete"] else None
            results["states_at_first_list"] = {n: seen["states"].get(n) for n in names}
            results["probe_lists"] = seen["asked"]

            audit_before = len(helper.audit())
            commands = time_commands(tenant, socket_path, names, args.runs)
            results["command"] = {op: summary(values) for op, values in commands.items()}
            records = helper.audit()
            results["command_in_helper"] = in_helper(records[audit_before:], tenant.pw_uid)

            audit_before = len(records)
            loop = ["--role", "loop", "--socket", socket_path, "--requests", str(args.requests)]
            looped = subprocess.run(
                as_tenant(*loop, *names),
                capture_output=True,
                text=True,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if looped.returncode != 0:
                raise RuntimeError(f"the open-connection loop failed: {looped.stderr[-2000:]}")
            results["open"] = {op: summary(v) for op, v in json.loads(looped.stdout).items()}
            records = helper.audit()
            results["open_in_helper"] = in_helper(records[audit_before:], tenant.pw_uid)

            status = proc_status(pid)
            results["helper_rss_mib"] = int(status["VmRSS"].split()[0]) / 1024
            results["helper_peak_rss_mib"] = int(status["VmHWM"].split()[0]) / 1024
            results["helper_threads"] = int(status["Threads"])
            results["helper_cpu_s"] = cpu_seconds(pid)
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
            helper.stop()
            results["load_after"] = os.getloadavg()[0]
            if args.keep_dir:
                print(f"helper's files kept in {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    return results


def _ms(measure: dict[str, Any]) -> str:
    if not measure.get("n"):
        return "(none)"
    return f"{measure['p50']:7.1f} {measure['p99']:7.1f} {measure['max']:7.1f}   ({measure['n']})"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def report(results: dict[str, Any]) -> None:
    hosts, per_host = results["hosts"], results["domains_per_host"]
    print(
        f"fleet: {hosts} test-driver hosts x {per_host} domains over TLS "
        f"({hosts * per_host} domains), lab started in {results['lab_start_s']:.1f} s; "
        f"{results['cores']} cores, load average {results['load_before']:.2f} before, "
        f"{results['load_after']:.2f} after"
    )
    print(f"tenant {TENANT}: {', '.join(results['own_domains'])}")
    if results["frozen_hosts"]:
        print(f"{results['frozen_hosts']} host(s) without own domains frozen (SIGSTOP) throughout")
    print(
        f"helper start -> first answered list: {_seconds(results['first_list_s'])}; "
        f"-> every own domain known: {_seconds(results['complete_list_s'])} "
        f"(helper CPU by then {results['helper_cpu_at_complete_s']:.2f} s, "
        f"{results['probe_lists']} lists asked)"
    )
    print(f"  states in the first answer: {results['states_at_first_list']}")
    print(f"{'ms':<34} {'p50':>7} {'p99':>7} {'max':>7}   (n)")
    for label, key in (("vpsshell -c", "command"), ("open connection", "open")):
        for op in ("list", "status"):
            print(f"  {label + ' ' + op:<32} {_ms(results[key][op])}")
            print(f"    {'in helper':<30} {_ms(results[key + '_in_helper'][op])}")
    print(
        f"helper memory: VmRSS {results['helper_rss_mib']:.1f} MiB, peak "
        f"{results['helper_peak_rss_mib']:.1f} MiB, {results['helper_threads']} threads, "
        f"{results['helper_cpu_s']:.1f} s of CPU in all"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--domains", type=int, default=50, help="per host")
    parser.add_argument("--own", type=int, default=5, help="the tenant's domains")
    parser.add_argument("--runs", type=int, default=50, help="vpsshell -c of each command")
    parser.add_argument("--requests", type=int, default=500, help="of each, on one connection")
    parser.add_argument("--frozen", type=int, default=0, help="hosts hung before the start")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--keep-users", action="store_true")
    parser.add_argument("--keep-dir", action="store_true", help="keep the helper's files")
    parser.add_argument("--role", choices=("probe", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "probe":
        run_probe(args.socket, args.names)
        return 0
    if args.role == "loop":
        run_loop(args.socket, args.names, args.requests)
        return 0
    if os.geteuid() != 0:
        print("run as root: the fleet makes namespaces and users, the tenant is a real user")
        return 2
    try:
        results = measure(args)
    finally:
        if not args.keep_users:
            subprocess.run(["userdel", TENANT], check=False, capture_output=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
