"""Talking to the running helper over its admin socket (root only, mode 0600).

The admin tools change files; the helper also notices within ``policy_poll_seconds``, but an
explicit ``reload`` makes the change take effect before the command returns and reports what
the helper itself loaded. A helper that is not running is not an error for a file change: the
new policy is read when it starts. This module sends no identity; the helper checks the
socket's peer credentials.
"""

from __future__ import annotations

from typing import Any

from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.errors import Unavailable, VpsError

RELOAD_TIMEOUT_SECONDS = 30.0


def admin_call(
    ctx: AdminContext,
    op: str,
    args: dict[str, Any] | None = None,
    *,
    timeout: float = RELOAD_TIMEOUT_SECONDS,
) -> Any:
    """One admin request; ``Unavailable`` if the helper cannot be reached."""
    from vpsshell.client import HelperClient

    client = HelperClient(ctx.config.admin_socket)
    try:
        return client.call(op, args or {}, timeout=timeout)
    finally:
        client.close()


def reload_helper(ctx: AdminContext) -> bool:
    """Ask the helper to reload after a file change; False only if it reports a broken policy."""
    try:
        result = admin_call(ctx, "reload")
    except Unavailable:
        ctx.note(
            f"note: the helper is not running (nothing answers on {ctx.config.admin_socket}); "
            "it reads the new policy when it starts"
        )
        return True
    except VpsError as exc:
        ctx.note(f"warning: the helper did not reload: {exc.message}")
        return True
    errors = [str(error) for error in result.get("errors", [])]
    for error in errors:
        ctx.out(f"helper: {error}")
    if errors:
        ctx.out("warning: the helper reports the policy as broken and denies everything")
        return False
    ctx.out(f"helper reloaded: {result.get('rules', '?')} rule(s) in force")
    return True


def cmd_reload(ctx: AdminContext) -> int:
    """``vpsshell-admin reload``: unlike after a file change, a missing helper is an error."""
    try:
        result = admin_call(ctx, "reload")
    except VpsError as exc:
        raise AdminError(exc.message, int(exc.exit_code)) from None
    for error in result["errors"]:
        ctx.out(str(error))
    ctx.out(f"reloaded: {result['rules']} rule(s)" + (", BROKEN" if result["errors"] else ""))
    return AdminExit.FAILED if result["errors"] else AdminExit.OK
