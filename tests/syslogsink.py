"""A syslog of the test's own: what vpsshell sends to /dev/log, caught without touching the host's.

``SyslogSink`` is a datagram socket in a test directory; ``with_dev_log()`` gives the argv prefix
that runs a command in a mount namespace of its own where /dev is a small tmpfs holding the
usual device nodes (bound from the real /dev) and ``log``, bound to the sink. The command and
whatever it starts (a detached helper) see that /dev/log and nothing else changes for anyone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path

from harness import wait_until

# runs as root in the new namespace: $1 a directory for the real /dev, $2 the sink, then argv
_PRIVATE_DEV = r"""
set -e
real=$1 sink=$2
shift 2
mount --rbind /dev "$real"
mount -t tmpfs -o mode=0755,size=1m vpsshell-test-dev /dev
for name in null zero full random urandom tty ptmx pts shm; do
  [ -e "$real/$name" ] || continue
  if [ -d "$real/$name" ]; then mkdir "/dev/$name"; mount --rbind "$real/$name" "/dev/$name"
  else touch "/dev/$name"; mount --bind "$real/$name" "/dev/$name"; fi
done
ln -s /proc/self/fd /dev/fd
touch /dev/log
mount --bind "$sink" /dev/log
exec "$@"
"""

# "<PRI>IDENT[PID]: TEXT" as glibc's syslog(3) and vpsshell send it (the time is optional)
_MESSAGE = re.compile(r"<(?P<pri>\d+)>(?:\w{3} [ \d]\d \d\d:\d\d:\d\d )?(?P<text>.*)", re.S)


class SyslogSink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "dev-log"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o666)  # tenants' processes send to it too
        self.sock.setblocking(False)
        self.received: list[tuple[int, str]] = []  # (priority, "ident[pid]: text")

    def with_dev_log(self) -> list[str]:
        real_dev = self.directory / "real-dev"
        real_dev.mkdir(exist_ok=True)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _PRIVATE_DEV,
                "sh", str(real_dev), str(self.path)]  # fmt: skip

    def _drain(self) -> None:
        while self.sock.fileno() != -1:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            found = _MESSAGE.match(data.decode("utf-8", "replace").rstrip("\0\n"))
            if found:
                self.received.append((int(found["pri"]), found["text"]))

    def messages(self, containing: str = "") -> list[tuple[int, str]]:
        self._drain()
        return [(pri, text) for pri, text in self.received if containing in text]

    def wait_for(self, containing: str, timeout: float = 15) -> tuple[int, str]:
        found = wait_until(
            lambda: self.messages(containing), timeout, f"no syslog message with {containing!r}"
        )
        return found[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop listening; what was received stays readable with ``messages()``."""
        self._drain()
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
