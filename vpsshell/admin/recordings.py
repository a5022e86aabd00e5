"""``vpsshell-admin recordings list|export``: the consoles the helper recorded.

Both read the recordings directory of the helper's config themselves (the helper need not run):
``list`` the info files, ``export`` one recording as asciicast v2, which ``asciinema play``
plays. What a recording's info says (user and domain names) is printed inert.
"""

from __future__ import annotations

import json
import time

from vpsshell.admin.auditlog import inert
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.recording_format import asciicast_lines, is_recording_id, list_directory, read_info


def cmd_recordings_list(
    ctx: AdminContext, *, domain: str | None, user: str | None, as_json: bool
) -> int:
    directory = ctx.config.recordings_path
    found = [
        info
        for info in list_directory(directory)
        if (domain is None or info.domain == domain) and (user is None or user in info.users())
    ]
    now = time.time()
    if as_json:
        rows = [{**info.to_json(now), "uuid": info.uuid} for info in found]
        ctx.out(json.dumps(rows, indent=2, ensure_ascii=True))
        return AdminExit.OK
    if not found:
        ctx.note(f"no recordings in {directory}")
        return AdminExit.OK
    ctx.out(f"{'ID':<22} {'STARTED':<20} {'DOMAIN':<16} {'SECONDS':>8} {'BYTES':>9}  USERS")
    for info in found:
        row = info.to_json(now)
        users = ", ".join(inert(name) for name in info.users())
        more = f" (+{info.more_attached} attaches)" if info.more_attached else ""
        ctx.out(
            f"{info.id:<22} {row['started']:<20} {inert(info.domain):<16} "
            f"{row['seconds']:>8} {info.size:>9}  {users}{more}"
        )
    return AdminExit.OK


def cmd_recordings_export(ctx: AdminContext, rec_id: str) -> int:
    if not is_recording_id(rec_id):
        raise AdminError(f"{rec_id!r} is not a recording ID (see: vpsshell-admin recordings list)")
    directory = ctx.config.recordings_path
    info = read_info(directory, rec_id)
    if info is None:
        raise AdminError(f"no recording {rec_id} in {directory}")
    ctx.stdout.flush()
    out = getattr(ctx.stdout, "buffer", None)
    for line in asciicast_lines(directory, info):
        if out is not None:
            out.write(line)
        else:
            ctx.stdout.write(line.decode("ascii"))
    if out is not None:
        out.flush()
    return AdminExit.OK
