"""``vpsshell-admin recordings list|export``: the console sessions the helper recorded.

Both read the recordings directory of the helper's config themselves (the helper need not run):
``list`` the headers, ``export`` one file as it is, an asciicast v2 that ``asciinema play``
plays. What a recording's header says (a user, a domain name) is printed inert.
"""

from __future__ import annotations

import json
import os
import time

from vpsshell.admin.auditlog import inert
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.daemon.recordings import is_recording_id, list_directory, read_info

EXPORT_CHUNK_BYTES = 64 * 1024


def cmd_recordings_list(
    ctx: AdminContext, *, domain: str | None, user: str | None, as_json: bool
) -> int:
    directory = ctx.config.recordings_path
    found = [
        info
        for info in list_directory(directory)
        if (domain is None or info.domain == domain) and (user is None or info.user == user)
    ]
    now = time.time()
    if as_json:
        rows = [{**info.to_json(now), "uuid": info.uuid} for info in found]
        ctx.out(json.dumps(rows, indent=2, ensure_ascii=True))
        return AdminExit.OK
    if not found:
        ctx.note(f"no recordings in {directory}")
        return AdminExit.OK
    ctx.out(
        f"{'ID':<22} {'STARTED':<20} {'DOMAIN':<16} {'USER':<12} {'MODE':<5} {'SECONDS':>8} SIZE"
    )
    for info in found:
        row = info.to_json(now)
        ctx.out(
            f"{info.id:<22} {row['started']:<20} {inert(info.domain):<16} "
            f"{inert(info.user):<12} {inert(info.mode):<5} {row['seconds']:>8} {info.size}"
        )
    return AdminExit.OK


def cmd_recordings_export(ctx: AdminContext, rec_id: str) -> int:
    if not is_recording_id(rec_id):
        raise AdminError(f"{rec_id!r} is not a recording ID (see: vpsshell-admin recordings list)")
    directory = ctx.config.recordings_path
    path = os.path.join(directory, f"{rec_id}.cast")
    if read_info(path, rec_id) is None:
        raise AdminError(f"no recording {rec_id} in {directory}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AdminError(f"{path}: {exc.strerror}") from None
    ctx.stdout.flush()
    out = getattr(ctx.stdout, "buffer", None)
    try:
        while chunk := os.read(fd, EXPORT_CHUNK_BYTES):
            if out is not None:
                out.write(chunk)
            else:
                ctx.stdout.write(chunk.decode("utf-8", errors="replace"))
    finally:
        os.close(fd)
    if out is not None:
        out.flush()
    return AdminExit.OK
