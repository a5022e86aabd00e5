"""``vpsshell-admin keys list|add|remove USER``: a tenant's SSH public keys, for the admin.

The same file, lock and checks as the tenant's own ``keys`` verb (``daemon.keys.KeyFile``): no
options, no weak or unknown types, no duplicates, at most ``keys_per_user``. The admin may
remove a tenant's last key with ``--allow-last``; removing a key ends every live session of
the tenant (there is no asking session to keep). Each change is appended to the helper's audit
log, as ``admin:keys-add`` or ``admin:keys-remove`` with the key's fingerprint.
"""

from __future__ import annotations

import json
import pwd

from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.daemon.audit import AuditLog
from vpsshell.daemon.keys import KeyFile, KeyRefused, end_sessions
from vpsshell.errors import UsageError


def _key_file(ctx: AdminContext, user: str) -> KeyFile:
    limits = ctx.config.limits
    try:
        return KeyFile(
            ctx.config.authorized_keys_dir,
            user,
            max_keys=limits.keys_per_user,
            max_line_bytes=limits.key_line_bytes,
        )
    except UsageError as exc:
        raise AdminError(exc.message, AdminExit.USAGE) from None


def _audit(ctx: AdminContext, action: str, user: str, fingerprint: str, **extra: object) -> None:
    audit = AuditLog(ctx.config.audit_log)
    try:
        audit.write(action=f"admin:{action}", user=user, key=fingerprint, result="ok", **extra)
    finally:
        audit.close()


def cmd_keys_list(ctx: AdminContext, user: str, as_json: bool) -> int:
    entries = _key_file(ctx, user).entries()
    if as_json:
        ctx.out(json.dumps([entry.to_json() for entry in entries], indent=2))
        return AdminExit.OK
    for entry in entries:
        info = entry.to_json()
        if entry.key is None:
            ctx.out(f"(kept as written) {entry.line[:100]}")
            continue
        ctx.out(
            f"{info['type']} {info['bits']} {info['fingerprint']} "
            f"{info['comment'] or '-'} {info['added'] or '-'}"
        )
    if not entries:
        ctx.note(f"{user} has no keys")
    return AdminExit.OK


def cmd_keys_add(ctx: AdminContext, user: str, words: list[str]) -> int:
    line = " ".join(words) if words else ctx.stdin.read(ctx.config.limits.key_line_bytes * 2)
    try:
        key = _key_file(ctx, user).add(line)
    except KeyRefused as exc:
        raise AdminError(f"{user}: {exc.message}", AdminExit.USAGE) from None
    _audit(ctx, "keys-add", user, key.fingerprint)
    ctx.out(f"added {key.fingerprint} ({key.kind}, {key.bits} bits) for {user}")
    return AdminExit.OK


def cmd_keys_remove(ctx: AdminContext, user: str, fingerprint: str, allow_last: bool) -> int:
    if not fingerprint.startswith("SHA256:"):
        fingerprint = f"SHA256:{fingerprint}"
    try:
        _key_file(ctx, user).remove(
            fingerprint, allow_last=allow_last or ctx.config.keys_allow_removing_last
        )
    except KeyRefused as exc:
        raise AdminError(
            f"{user}: {exc.message} (--allow-last to remove it anyway)"
            if "last key" in exc.message
            else f"{user}: {exc.message}",
            AdminExit.USAGE,
        ) from None
    ended = 0
    try:
        ended = end_sessions(pwd.getpwnam(user).pw_uid)
    except KeyError:
        pass  # no such account (any more): no sessions either
    _audit(ctx, "keys-remove", user, fingerprint, sessions_ended=ended)
    ctx.out(f"removed {fingerprint} of {user}; {ended} session process(es) ended")
    return AdminExit.OK
