"""Benchmark: how the policy scales with its number of rules (load, memory, decisions, grant).

Generates the policy of a hosting provider of a given size in a temp directory and, in a fresh
interpreter per size (so the memory figures are that one policy's), measures:

- **load**: ``load_policy_dir`` of the whole directory (read, parse, expand sets, index), which
  is what ``vpsshelld`` does at start and on every policy change, and what ``vpsshell-admin``
  does to validate a change;
- **memory**: the interpreter's resident set (``VmRSS``) after the load minus before it, and
  the peak (``VmHWM``) during it;
- **decisions**: ``Policy.decide`` for a tenant (a user with a few rules of their own) and for a
  support person (a group with a rule on every rack of domains), and ``visible_domains`` over
  1000 candidate domains (what a ``list`` costs on a host with 1000 domains) for both; medians
  over many random calls;
- **gateway list**: what ``list`` costs the policy on a gateway, where every domain of the
  policy exists on some host: a tenant's ``granted_domains`` then ``visible_domains`` of just
  those (what the helper does), beside ``visible_domains`` over every domain (what it did);
- **grant**: ``vpsshell-admin policy grant`` of one new tenant domain, as a real process
  (validate the whole directory with the change, show the change in who may do what, install),
  its time and peak RSS; no helper runs, so it only notes that the helper will read the
  policy when it starts. At exactly MAX_RULES the grant is refused (shown as ``r``): the
  time is that of finding out.

The policy: tenants own 1-3 domains each (2 on average) and get ``@operator`` on them; every
fourth tenant also has a console grant that expires; one tenant in a hundred is suspended
(``deny user:... * *``); the domains are grouped into racks of 200 (``domains @rackN``) and
``group:support`` has ``@viewer`` on every rack, ``group:noc`` ``start,reboot``, with a deny of
``console`` on the first rack. Rules go into files of 20,000 rules (``20-tenants-NNN.policy``)
and racks into files of 2000 (``10-racks-NNN.policy``), as a provisioning system would write
them.

    python bench/policy_scale.py [--sizes 1000,10000,100000,500000] [--calls 3000] [--no-grant]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RACK_SIZE = 200
RULES_PER_FILE = 20_000
RACKS_PER_FILE = 2000
CANDIDATES = 1000


def domains_of(tenant: int) -> list[str]:
    return [f"t{tenant:06d}-{kind}" for kind in ("web", "db", "mail")[: 1 + tenant % 3]]


def tenant_rules(tenant: int) -> list[str]:
    user = f"user:t{tenant:06d}"
    domains = domains_of(tenant)
    rules = [f"allow {user} @operator {' '.join(domains)}"]
    if tenant % 4 == 1:
        rules.append(f"allow {user} console,sysrq {domains[0]} expires=2999-12-31")
    if tenant % 100 == 99:
        rules.append(f'deny {user} * * reason="suspended: unpaid invoice"')
    return rules


def generate(directory: Path, rules: int) -> dict[str, object]:
    """Write a policy of exactly ``rules`` rules into ``directory``; describe what it holds."""
    tenant_lines: list[str] = []
    all_domains: list[str] = []
    tenant = 0
    racks = 0
    while True:
        racks = (len(all_domains) + RACK_SIZE - 1) // RACK_SIZE
        staff = 2 * racks + 1  # support and noc per rack, one deny
        if len(tenant_lines) + staff >= rules:
            break
        tenant_lines.extend(tenant_rules(tenant))
        all_domains.extend(domains_of(tenant))
        tenant += 1
    racks = max(1, (len(all_domains) + RACK_SIZE - 1) // RACK_SIZE)
    staff_lines = [f"allow group:support @viewer @rack{r}" for r in range(racks)]
    staff_lines += [f"allow group:noc start,reboot @rack{r}" for r in range(racks)]
    staff_lines.append('deny group:support console @rack0 reason="the NOC only"')
    del tenant_lines[rules - len(staff_lines) :]
    set_lines = [
        f"domains @rack{r} = " + " ".join(all_domains[r * RACK_SIZE : (r + 1) * RACK_SIZE])
        for r in range(racks)
    ]
    directory.mkdir(mode=0o755)
    for index, start in enumerate(range(0, len(set_lines), RACKS_PER_FILE)):
        chunk = set_lines[start : start + RACKS_PER_FILE]
        (directory / f"10-racks-{index:03d}.policy").write_text("\n".join(chunk) + "\n")
    (directory / "30-staff.policy").write_text("\n".join(staff_lines) + "\n")
    for index, start in enumerate(range(0, len(tenant_lines), RULES_PER_FILE)):
        chunk = tenant_lines[start : start + RULES_PER_FILE]
        (directory / f"20-tenants-{index:03d}.policy").write_text("\n".join(chunk) + "\n")
    for path in directory.iterdir():
        path.chmod(0o644)
    total_bytes = sum(path.stat().st_size for path in directory.iterdir())
    return {
        "rules": len(tenant_lines) + len(staff_lines),
        "tenants": tenant,
        "domains": len(all_domains),
        "files": len(list(directory.iterdir())),
        "bytes": total_bytes,
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _median_us(function: object, calls: list[tuple[object, ...]]) -> float:
    assert callable(function)
    times = []
    for args in calls:
        start = time.perf_counter()
        function(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(directory: str, calls: int) -> dict[str, float]:
    """The measurements for the policy in ``directory`` (run in a fresh interpreter)."""
    from vpsshell.policy import load_policy_dir

    trusted = frozenset({0, os.geteuid()})
    rss_before = _status_kib("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    policy = load_policy_dir(directory, trusted_uids=trusted)
    load_seconds = time.perf_counter() - start
    load_cpu_seconds = time.process_time() - cpu_start
    rss_after = _status_kib("VmRSS")
    peak = _status_kib("VmHWM")
    if policy.errors:
        raise SystemExit(f"the generated policy is broken: {policy.errors[:3]}")
    tenants = sorted({r.subject_name for r in policy.rules if r.subject_kind == "user"})
    every_domain = sorted({d for r in policy.rules if r.domains for d in r.domains})
    rng = random.Random(12)
    actions = ["status", "start", "console", "poweroff", "log"]

    def tenant_call() -> tuple[object, ...]:
        user = rng.choice(tenants)
        own = rng.random() < 0.5
        domain = f"{user}-web" if own else rng.choice(every_domain)
        return (user, ["tenants"], rng.choice(actions), domain)

    def staff_call() -> tuple[object, ...]:
        return ("sam", ["staff", "support"], rng.choice(actions), rng.choice(every_domain))

    def listing(user: str, groups: list[str]) -> tuple[object, ...]:
        sample = rng.sample(every_domain, min(CANDIDATES, len(every_domain)))
        return (user, groups, sample)

    def gateway_list(user: str) -> None:
        policy.visible_domains(user, ["tenants"], policy.granted_domains(user, ["tenants"]))

    list_calls = max(20, calls // 100)
    every_domain_calls = [(rng.choice(tenants), ["tenants"], every_domain) for _ in range(5)]
    return {
        "gateway_list_us": _median_us(
            gateway_list, [(rng.choice(tenants),) for _ in range(list_calls)]
        ),
        "every_domain_list_us": _median_us(policy.visible_domains, every_domain_calls),
        "load_s": load_seconds,
        "load_cpu_s": load_cpu_seconds,
        "rss_mib": (rss_after - rss_before) / 1024,
        "peak_mib": (peak - rss_before) / 1024,
        "decide_tenant_us": _median_us(policy.decide, [tenant_call() for _ in range(calls)]),
        "decide_staff_us": _median_us(policy.decide, [staff_call() for _ in range(calls)]),
        "list_tenant_us": _median_us(
            policy.visible_domains,
            [listing(rng.choice(tenants), ["tenants"]) for _ in range(list_calls)],
        ),
        "list_staff_us": _median_us(
            policy.visible_domains,
            [listing("sam", ["staff", "support"]) for _ in range(list_calls)],
        ),
    }


def time_grant(directory: Path, workdir: Path) -> tuple[float, int, float]:
    """Seconds, exit status and peak RSS (MiB) of one ``vpsshell-admin policy grant``."""
    config = workdir / "vpsshelld.toml"
    config.write_text(
        f'policy_dir = "{directory}"\n'
        f'admin_socket = "{workdir / "admin.sock"}"\n'
        f'audit_log = "{workdir / "audit.jsonl"}"\n'
    )
    admin = Path(sys.executable).parent / "vpsshell-admin"
    argv = [str(admin), "--config", str(config), "policy", "grant"]
    argv += ["user:newtenant", "@operator", "newtenant-web"]
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read()
    _, wait_status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(wait_status)
    refused = process.returncode == 1 and b"too many rules" in output
    if process.returncode != 0 and not refused:
        print(f"  grant failed ({process.returncode}): {output[-1000:].decode(errors='replace')}")
    return seconds, process.returncode, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,500000")
    parser.add_argument("--calls", type=int, default=3000, help="decisions timed per kind")
    parser.add_argument("--no-grant", action="store_true", help="skip timing vpsshell-admin")
    parser.add_argument("--child", nargs=2, metavar=("DIR", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        directory, calls = args.child
        print(json.dumps(measure(directory, int(calls))))
        return 0

    from vpsshell.policy.model import MAX_RULES

    print(f"MAX_RULES = {MAX_RULES:,}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    columns = [
        ("rules", ""),
        ("tenants", ""),
        ("domains", ""),
        ("files", ""),
        ("text", "MiB"),
        ("load", "s"),
        ("load", "CPU s"),
        ("RSS", "MiB"),
        ("peak", "MiB"),
        ("decide", "µs"),
        ("d.staff", "µs"),
        ("list", "µs"),
        ("l.staff", "µs"),
        ("gw.list", "µs"),
        ("l.all", "ms"),
        ("grant", "s"),
        ("grant", "MiB"),
    ]
    print(" ".join(f"{name:>8}" for name, _ in columns))
    print(" ".join(f"{unit:>8}" for _, unit in columns))
    for size in (int(s) for s in args.sizes.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="vpsshell-policy-scale-"))
        try:
            workdir.chmod(0o755)
            directory = workdir / "policy.d"
            shape = generate(directory, size)
            argv = [sys.executable, __file__, "--child", str(directory), str(args.calls)]
            child = subprocess.run(argv, capture_output=True, text=True, check=False)
            if child.returncode != 0:
                raise SystemExit(f"measuring {size} rules failed: {child.stderr[-2000:]}")
            numbers = json.loads(child.stdout)
            grant = grant_rss = "-"
            if not args.no_grant:
                seconds, status, peak = time_grant(directory, workdir)
                # at exactly MAX_RULES one more rule is refused ("r"): that is the point
                grant = {0: f"{seconds:.2f}", 1: f"{seconds:.2f}r"}.get(status, f"rc {status}")
                grant_rss = f"{peak:.0f}"
            cells = [
                f"{shape['rules']:,}",
                f"{shape['tenants']:,}",
                f"{shape['domains']:,}",
                f"{shape['files']}",
                f"{int(shape['bytes']) / 2**20:.1f}",
                f"{numbers['load_s']:.2f}",
                f"{numbers['load_cpu_s']:.2f}",
                f"{numbers['rss_mib']:.0f}",
                f"{numbers['peak_mib']:.0f}",
                f"{numbers['decide_tenant_us']:.1f}",
                f"{numbers['decide_staff_us']:.1f}",
                f"{numbers['list_tenant_us']:.0f}",
                f"{numbers['list_staff_us']:.0f}",
                f"{numbers['gateway_list_us']:.0f}",
                f"{numbers['every_domain_list_us'] / 1000:.0f}",
                grant,
                grant_rss,
            ]
            print(" ".join(f"{cell:>8}" for cell in cells), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
