"""systemd integration without libsystemd: readiness notification and socket activation.

``notify()`` sends ``READY=1``/``STOPPING=1`` datagrams to ``$NOTIFY_SOCKET`` (sd_notify(3)).
``activated_socket(path)`` returns the listening socket systemd passed for ``path``
(``$LISTEN_FDS``/``$LISTEN_PID``, sd_listen_fds(3)), or None when the helper was not socket
activated. Both are no-ops outside systemd.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(state: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            pass  # systemd gone or not listening: nothing to tell


def activated_socket(path: str) -> socket.socket | None:
    """The inherited listening Unix socket bound to ``path``, if systemd passed one."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        if sock.family == socket.AF_UNIX and sock.getsockname() == path:
            os.set_inheritable(fd, False)
            sock.setblocking(False)
            return sock
        sock.detach()  # not ours to close
    return None
