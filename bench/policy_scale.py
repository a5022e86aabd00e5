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
- **grant**: ``vpsshell-admin policy grant`` of one new tenant domain, as a real process
  (validate the whole directory with the change, show the change in who may do what, install);
  no helper runs, so it only notes that the helper will read the policy when it starts.

The policy: tenants own 1-3 domains each (2 on average) and get ``@operator`` on them; every
fourth tenant also has a console grant that expires; one tenant in a hundred is suspended
(``deny user:... * *``); the domains are grouped into racks of 200 (``domains @rackN``) and
``group:support`` has ``@viewer`` on every rack, ``group:noc`` ``start,reboot``, with a deny of
``console`` on the first rack. Rules go into files of 20,000 rules (``20-tenants-NNN.policy``),
as a provisioning system would write them.

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
    (directory / "10-racks.policy").write_text("\n".join(set_lines) + "\n")
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


def measure(directory: str, domains: int, calls: int) -> dict[str, float]:
    """The measurements for the policy in ``directory`` (run in a fresh interpreter)."""
    from vpsshell.policy import load_policy_dir

    trusted = frozenset({0, os.geteuid()})
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    policy = load_policy_dir(directory, trusted_uids=trusted)
    load_seconds = time.perf_counter() - start
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

    list_calls = max(20, calls // 100)
    return {
        "load_s": load_seconds,
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


def time_grant(directory: Path, workdir: Path) -> tuple[float, int]:
    """Seconds and exit status of one ``vpsshell-admin policy grant`` on ``directory``."""
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
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(f"  grant failed ({done.returncode}): {done.stdout[-500:]}{done.stderr[-500:]}")
    return seconds, done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,500000")
    parser.add_argument("--calls", type=int, default=3000, help="decisions timed per kind")
    parser.add_argument("--no-grant", action="store_true", help="skip timing vpsshell-admin")
    parser.add_argument(
        "--child", nargs=3, metavar=("DIR", "DOMAINS", "CALLS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        directory, domains, calls = args.child
        print(json.dumps(measure(directory, int(domains), int(calls))))
        return 0

    from vpsshell.policy.model import MAX_RULES

    print(f"MAX_RULES = {MAX_RULES:,}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    header = (
        f"{'rules':>8} {'tenants':>8} {'domains':>8} {'MiB':>6} {'load':>8} {'RSS':>8} "
        f"{'peak':>8} {'decide':>8} {'d.staff':>8} {'list':>8} {'l.staff':>8} {'grant':>8}"
    )
    print(header)
    print(
        f"{'':>8} {'':>8} {'':>8} {'files':>6} {'s':>8} {'MiB':>8} {'MiB':>8} "
        f"{'µs':>8} {'µs':>8} {'µs':>8} {'µs':>8} {'s':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="vpsshell-policy-scale-"))
        try:
            workdir.chmod(0o755)
            directory = workdir / "policy.d"
            shape = generate(directory, size)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(directory),
                    str(shape["domains"]),
                    str(args.calls),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            numbers = json.loads(child.stdout)
            grant = "-"
            if not args.no_grant:
                seconds, status = time_grant(directory, workdir)
                grant = f"{seconds:.2f}" if status == 0 else f"rc {status}"
            print(
                f"{shape['rules']:>8,} {shape['tenants']:>8,} {shape['domains']:>8,} "
                f"{int(shape['bytes']) / 2**20:>6.1f} {numbers['load_s']:>8.3f} "
                f"{numbers['rss_mib']:>8.1f} {numbers['peak_mib']:>8.1f} "
                f"{numbers['decide_tenant_us']:>8.1f} {numbers['decide_staff_us']:>8.1f} "
                f"{numbers['list_tenant_us']:>8.0f} {numbers['list_staff_us']:>8.0f} "
                f"{grant:>8}",
                flush=True,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
