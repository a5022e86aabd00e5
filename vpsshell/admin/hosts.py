"""``vpsshell-admin hosts`` and ``migrate``: a gateway's hypervisors, as the helper sees them.

Both are front ends to the admin socket's ``hosts`` and ``migrate`` operations (libvirt backend
only); the helper holds the connections and does the work. What the helper sends is printed
inert.
"""

from __future__ import annotations

import json
import time
from typing import Any

from vpsshell.admin.auditlog import inert
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.helper import admin_call
from vpsshell.errors import VpsError

MIGRATE_REPLY_MARGIN_SECONDS = 30  # the helper's own answer after its migration timeout


def _call(ctx: AdminContext, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
    try:
        return admin_call(ctx, op, args, timeout=timeout)
    except VpsError as exc:
        message = exc.message
        if exc.kind == "usage" and "unknown admin operation" in message:
            message = f"the helper's backend has no hosts ({op} needs the libvirt backend)"
        raise AdminError(message, int(exc.exit_code)) from None


def _ago(since: Any) -> str:
    if not isinstance(since, int | float):
        return "-"
    seconds = max(0, int(time.time() - since))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(since))


def cmd_hosts(ctx: AdminContext, as_json: bool) -> int:
    hosts = _call(ctx, "hosts", {})
    if not isinstance(hosts, list):
        raise AdminError("unexpected answer from the helper")
    if as_json:
        ctx.out(json.dumps(hosts, indent=2, ensure_ascii=True))
    else:
        ctx.out(f"{'HOST':<16} {'STATE':<14} {'SINCE':<17} {'DOMAINS':>7}  URI / LAST ERROR")
        for host in hosts:
            ctx.out(
                f"{inert(host.get('name')):<16} {inert(host.get('state')):<14} "
                f"{_ago(host.get('since')):<17} {inert(host.get('domains')):>7}  "
                f"{inert(host.get('uri'))}"
            )
            if host.get("last_error") and host.get("state") != "connected":
                ctx.out(f"{'':<58}{inert(host.get('last_error'))}")
    down = [host for host in hosts if host.get("state") != "connected"]
    return AdminExit.FAILED if down else AdminExit.OK


def cmd_migrate(ctx: AdminContext, domain: str, host: str, timeout: int, as_json: bool) -> int:
    if not as_json:
        ctx.note(f"migrating {domain} to {host} (live; at most {timeout} s)...")
    result = _call(
        ctx,
        "migrate",
        {"domain": domain, "host": host, "timeout": timeout},
        timeout=timeout + MIGRATE_REPLY_MARGIN_SECONDS,
    )
    if as_json:
        ctx.out(json.dumps(result, indent=2, ensure_ascii=True))
        return AdminExit.OK
    moved = result.get("domain", {}) if isinstance(result, dict) else {}
    ctx.out(
        f"{inert(moved.get('name'))} migrated from {inert(result.get('from'))} to "
        f"{inert(moved.get('host'))} in {inert(result.get('seconds'))} s; "
        f"now {inert(moved.get('state'))}"
    )
    return AdminExit.OK
