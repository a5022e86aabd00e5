"""``vpsshell-admin console-url``: a one-time browser console link for a hosting panel.

A thin front end to the admin socket's ``console-url`` operation: the helper checks that the
policy lets USER open that console now, mints the link (valid once, for a short time), keeps
its hash, and decides again when the link is used. The link is printed on stdout and nowhere
else; the audit log names it by a prefix of its hash only.
"""

from __future__ import annotations

import json

from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.helper import admin_call
from vpsshell.errors import VpsError


def cmd_console_url(
    ctx: AdminContext,
    user: str,
    domain: str,
    *,
    watch: bool,
    takeover: bool,
    seconds: int | None,
    as_json: bool,
) -> int:
    args: dict[str, object] = {"user": user, "domain": domain, "watch": watch}
    args["takeover"] = takeover
    if seconds is not None:
        args["seconds"] = seconds
    try:
        link = admin_call(ctx, "console-url", args)
    except VpsError as exc:
        raise AdminError(exc.message, int(exc.exit_code)) from None
    if not isinstance(link, dict) or not isinstance(link.get("url"), str):
        raise AdminError("unexpected answer from the helper")
    ctx.out(json.dumps(link, indent=2, ensure_ascii=True) if as_json else link["url"])
    return AdminExit.OK
