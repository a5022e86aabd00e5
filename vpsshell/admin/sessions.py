"""``vpsshell-admin sessions`` and ``kick``: console sessions in the running helper.

Both are thin front ends to the admin socket's ``sessions`` and ``kick`` operations; the helper
does the work. User names and domains shown come from the helper and are printed inert.
"""

from __future__ import annotations

import json
import time

from vpsshell.admin.auditlog import inert
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.helper import admin_call
from vpsshell.errors import VpsError


def _call(ctx: AdminContext, op: str, **args: object) -> object:
    try:
        return admin_call(ctx, op, dict(args))
    except VpsError as exc:
        raise AdminError(exc.message, int(exc.exit_code)) from None


def cmd_sessions(ctx: AdminContext, as_json: bool) -> int:
    sessions = _call(ctx, "sessions")
    if not isinstance(sessions, list):
        raise AdminError("unexpected answer from the helper")
    if as_json:
        ctx.out(json.dumps(sessions, indent=2, ensure_ascii=True))
        return AdminExit.OK
    if not sessions:
        ctx.out("no console sessions")
        return AdminExit.OK
    ctx.out(f"{'ID':>6}  {'USER':<16} {'DOMAIN':<16} {'MODE':<8} {'VIA':<5} {'PID':>7}  SINCE")
    for entry in sessions:
        since = entry.get("since")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
            if isinstance(since, int | float)
            else "-"
        )
        ctx.out(
            f"{inert(entry.get('id')):>6}  {inert(entry.get('user')):<16} "
            f"{inert(entry.get('domain')):<16} {inert(entry.get('mode')):<8} "
            f"{inert(entry.get('via') or 'shell'):<5} {inert(entry.get('pid')):>7}  {when}"
        )
    return AdminExit.OK


def cmd_kick(ctx: AdminContext, session_id: int | None, user: str | None) -> int:
    if (session_id is None) == (user is None):
        raise AdminError("give a session ID or --user USER (not both)", AdminExit.USAGE)
    args: dict[str, object] = {"id": session_id} if session_id is not None else {"user": user}
    result = _call(ctx, "kick", **args)
    kicked = result.get("kicked", 0) if isinstance(result, dict) else 0
    ctx.out(f"ended {kicked} console session(s)")
    return AdminExit.OK if kicked else AdminExit.FAILED
