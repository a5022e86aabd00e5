"""Benchmark: ``vpsshell -c list`` and ``status`` in a real Xen dom0, against ``xl list``.

Runs in the Xen lab left up by the lab tests (``VPSSHELL_XENLAB=1 VPSSHELL_XENLAB_KEEP=1
./run-tests tests/xen``): dom0 then has vpsshell installed, the helper's config and policy,
the tenant ``xt-alice`` and the domain ``web1``. This script starts the helper in dom0 if it is
not running, starts web1, and times N runs of each command inside dom0 (a small Python timer
there, so ssh is not in the numbers), interleaved so all see the same load. The tenant's
commands run as ``xt-alice``, as sshd would start them; ``xl`` runs as root, as an admin would.
Prints medians, p90 and the ratios to ``xl list``. Everything runs under QEMU's TCG: absolute
numbers are many times those of real hardware, the ratios are what to compare.

    python bench/xen_lab.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "xen"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lab import Machine, ensure_images  # noqa: E402
from labkit import HELPER_SOCKET, OWNER, SHARE, VENV, Lab, start_helper  # noqa: E402

TIMER = r"""
import json, os, pwd, statistics, subprocess, sys, time
runs = int(sys.argv[1])
tenant = pwd.getpwnam(sys.argv[2])
commands = json.loads(sys.argv[3])
env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
samples = {name: [] for name, _, _ in commands}
for _ in range(runs):
    for name, argv, as_tenant in commands:
        extra = {}
        if as_tenant:
            groups = os.getgrouplist(tenant.pw_name, tenant.pw_gid)
            extra = dict(user=tenant.pw_uid, group=tenant.pw_gid, extra_groups=groups)
        began = time.perf_counter()
        subprocess.run(argv, env=env, cwd="/", stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True, **extra)
        samples[name].append(time.perf_counter() - began)
print(json.dumps(samples))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    machine = Machine(ensure_images(), share=SHARE)
    with machine.lock(wait=False):
        return _bench(Lab(machine), args.runs)


def _bench(lab: Lab, runs: int) -> int:
    if not lab.machine.running() or lab.run(f"test -x {VENV}/bin/vpsshell", check=False).code:
        print("no lab with vpsshell in dom0: run the lab tests with VPSSHELL_XENLAB_KEEP=1")
        return 2
    if lab.run(f"test -S {HELPER_SOCKET}", check=False).code != 0:
        start_helper(lab)
    lab.run(lab.tenant_argv(OWNER, "start web1"), check=False)  # already running is fine
    vpsshell = f"{VENV}/bin/vpsshell"
    commands = [
        ("vpsshell -c list", [vpsshell, "-c", "list"], True),
        ("vpsshell -c 'status web1'", [vpsshell, "-c", "status web1"], True),
        ("xl list", ["/usr/sbin/xl", "list"], False),
        ("xl list web1", ["/usr/sbin/xl", "list", "web1"], False),
        ("python3 -I -c pass (floor)", ["/usr/bin/python3", "-I", "-c", "pass"], False),
    ]
    remote = f"python3 -c {shlex.quote(TIMER)} {runs} {OWNER} {shlex.quote(json.dumps(commands))}"
    samples: dict[str, list[float]] = json.loads(lab.run(remote, timeout=1800).out)
    print(f"{runs} runs each, in dom0 of the Xen lab (QEMU TCG):")
    medians = {}
    for name, values in samples.items():
        values.sort()
        medians[name] = values[len(values) // 2] * 1000
        p90 = values[int(len(values) * 0.9) - 1] * 1000
        print(f"  {name:<30} median {medians[name]:8.1f} ms   p90 {p90:8.1f} ms")
    peer = medians["xl list"]
    for name in ("vpsshell -c list", "vpsshell -c 'status web1'"):
        print(f"  ratio {name} / xl list: {medians[name] / peer:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
