"""Who is on the other end of a Unix socket, according to the kernel and NSS only.

``SO_PEERCRED`` gives the uid, gid and pid of the process that connected; the user name and
groups come from NSS at decision time. Nothing a client sends is ever used for identity.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from typing import NamedTuple

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Caller(NamedTuple):
    uid: int
    gid: int
    pid: int
    user: str
    groups: tuple[str, ...]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the connecting process, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def resolve_caller(pid: int, uid: int, gid: int) -> Caller | None:
    """Name and groups of ``uid`` from NSS; None if the uid has no passwd entry."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    names = []
    for group_id in os.getgrouplist(entry.pw_name, entry.pw_gid):
        try:
            names.append(grp.getgrgid(group_id).gr_name)
        except KeyError:
            continue
    return Caller(uid, gid, pid, entry.pw_name, tuple(sorted(set(names))))
