"""Benchmark: the interactive shell's time to first prompt, and its memory while idle.

Starts a private helper (sim backend, four domains) as the current user and installs the
isolated login-shell launcher into a temp dir, as ``oneliner.py`` does. Each run starts
``vpsshell`` (no arguments) on a fresh pty, answers the terminal queries a real terminal
would (cursor position), and measures the time from just before the process is started to
the moment its prompt is on the pty, after the greeting (banner and the ``list`` behind the
domains line). Then it leaves the prompt idle while the toolbar refreshes and reads the
process's resident set size (``VmRSS``) and its peak (``VmHWM``). Prints medians and p90;
targets: first prompt within 400 ms, idle RSS under 60 MiB.

    python bench/startup.py [--runs 20] [--idle 3]
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Helper  # noqa: E402

from vpsshell.admin.launcher import install_launcher  # noqa: E402

PROMPT = "@vpsshell>"
CPR_REQUEST = b"\x1b[6n"
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


class Shell:
    """One ``vpsshell`` on a pty of 100x30."""

    def __init__(self, program: str, env: dict[str, str]) -> None:
        self.started = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:  # the child: exactly the shell, nothing else
            os.execve(program, [program], env)
        self.pid, self.fd = pid, fd
        import fcntl
        import struct
        import termios

        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.output = b""

    def pump(self, timeout: float) -> None:
        """Read what the shell wrote; answer cursor position requests like a terminal."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return
        self.output += data
        for _ in range(data.count(CPR_REQUEST)):
            os.write(self.fd, b"\x1b[1;1R")

    def wait_for_prompt(self, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while PROMPT.encode() not in ESCAPES.sub(b"", self.output):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no prompt; the shell wrote {self.output[-500:]!r}")
            self.pump(0.05)
        return time.perf_counter() - self.started

    def idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(0.1)

    def memory_kib(self) -> tuple[int, int]:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
        return int(fields["VmRSS"]), int(fields["VmHWM"])

    def close(self) -> None:
        os.write(self.fd, b"\x04")  # Ctrl-D on the empty line: the shell leaves
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            self.pump(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before RSS")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vpsshell-bench-"))
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "root"
    helper = Helper(root / "helper", policy=f"allow user:{user} @operator web1 web2 web3 db1\n")
    try:
        helper.start()
        launcher = root / "vpsshell"
        install_launcher(str(launcher))
        env = {
            "PATH": "/usr/bin:/bin",
            "TERM": "xterm-256color",
            "LANG": "C.UTF-8",
            "HOME": str(root),
            "VPSSHELL_SOCKET": str(helper.socket),
        }
        warm = Shell(str(launcher), env)  # warm the page cache
        warm.wait_for_prompt()
        warm.close()
        startups: list[float] = []
        rss: list[int] = []
        peaks: list[int] = []
        for _ in range(args.runs):
            shell = Shell(str(launcher), env)
            startups.append(shell.wait_for_prompt())
            shell.idle(args.idle)
            now, peak = shell.memory_kib()
            rss.append(now)
            peaks.append(peak)
            shell.close()
        print(f"{args.runs} runs, {args.idle:g} s idle each ({os.cpu_count()} cores)")
        print(
            f"  time to first prompt     median {statistics.median(startups) * 1000:6.0f} ms"
            f"   p90 {percentile(startups, 0.9) * 1000:6.0f} ms   (target: 400 ms)"
        )
        print(
            f"  idle RSS                 median {statistics.median(rss) / 1024:6.1f} MiB"
            f"   max {max(rss) / 1024:6.1f} MiB   (target: under 60 MiB)"
        )
        print(f"  peak RSS (VmHWM)         median {statistics.median(peaks) / 1024:6.1f} MiB")
    finally:
        helper.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
