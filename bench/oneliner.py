"""Benchmark: ``vpsshell -c list`` end to end, against ``virsh -c test:///default list``.

Starts a private helper (sim backend, four domains) as the current user, installs the isolated
login-shell launcher into a temp dir, then times N runs of each command in the same session,
interleaved so both see the same machine load. Prints medians, p90 and the ratio to virsh.

    python bench/oneliner.py [--runs 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Helper  # noqa: E402

from vpsshell.admin.launcher import install_launcher  # noqa: E402


def time_command(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def summary(name: str, samples: list[float]) -> float:
    median = statistics.median(samples) * 1000
    p90 = statistics.quantiles(samples, n=10)[-1] * 1000
    print(f"  {name:<34} median {median:7.1f} ms   p90 {p90:7.1f} ms")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    virsh = shutil.which("virsh")
    root = Path(tempfile.mkdtemp(prefix="vpsshell-bench-"))
    helper = Helper(
        root / "helper",
        policy=f"allow user:{os.environ.get('USER', 'root')} @operator web1 web2 web3 db1\n",
    )
    try:
        helper.start()
        launcher = root / "vpsshell"
        install_launcher(str(launcher))
        env = {"PATH": "/usr/bin:/bin", "VPSSHELL_SOCKET": str(helper.socket), "LANG": "C.UTF-8"}
        pip_wrapper = str(Path(sys.executable).parent / "vpsshell")
        commands = {
            "vpsshell -c list (launcher, -I)": [str(launcher), "-c", "list"],
            "vpsshell -c list (pip wrapper)": [pip_wrapper, "-c", "list"],
            "python3 -I -c pass (floor)": [sys.executable, "-I", "-c", "pass"],
        }
        if virsh:
            commands["virsh -c test:///default list"] = [virsh, "-c", "test:///default", "list"]
        for argv in commands.values():  # warm caches
            time_command(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                samples[name].append(time_command(argv, env))
        print(f"{args.runs} runs each, interleaved ({os.cpu_count()} cores)")
        medians = {name: summary(name, values) for name, values in samples.items()}
        if virsh:
            ratio = (
                medians["vpsshell -c list (launcher, -I)"]
                / medians["virsh -c test:///default list"]
            )
            print(f"  ratio vpsshell/virsh: {ratio:.2f} (target: at most 2.0)")
        else:
            print("  virsh not installed (apt-get install libvirt-clients): no ratio")
    finally:
        helper.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
