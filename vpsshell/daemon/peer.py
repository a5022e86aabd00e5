"""Who is on the other end of a Unix socket, according to the kernel and NSS only.

``SO_PEERCRED`` gives the uid, gid and pid of the process that connected; the user name and
groups come from NSS at decision time: ``CallerLookup`` looks them up anew for every request
(reusing an answer for at most ``CALLER_CACHE_SECONDS``), so a user removed from a group loses
what the group granted at the next request, not at the next connection. Nothing a client sends
is ever used for identity.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
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


CALLER_CACHE_SECONDS = 1.0
MAX_CACHED_CALLERS = 10_000


class CallerLookup:
    """Callers as NSS says they are now, at most ``CALLER_CACHE_SECONDS`` old."""

    def __init__(self, max_age: float = CALLER_CACHE_SECONDS) -> None:
        self.max_age = max_age
        self._known: dict[int, tuple[float, Caller | None]] = {}

    def fresh(self, caller: Caller) -> Caller | None:
        """``caller`` with its name and groups looked up again; None if the uid is gone."""
        now = time.monotonic()
        known = self._known.get(caller.uid)
        if known is None or now - known[0] >= self.max_age:
            if len(self._known) >= MAX_CACHED_CALLERS:
                self._known.clear()
            known = (now, resolve_caller(caller.pid, caller.uid, caller.gid))
            self._known[caller.uid] = known
        found = known[1]
        if found is None:
            return None
        return found._replace(pid=caller.pid, gid=caller.gid)
