"""Tenant self-service operations: ``keys`` (their SSH public keys) and ``totp`` (a second factor).

Declared like every tenant operation (``operations.operation``); the ``keys`` ones need the
self-service policy action ``keys`` (decided per user, whatever domains a rule names: see
``policy.model.SELF_SERVICE_ACTIONS``), the ``totp`` ones only a caller (anyone may give
themselves a second factor). They act on the caller's own account only, named by the
``Authorizer``'s fresh caller (peer credentials and NSS), never by anything in the request.

A removed key stops working at the next login (sshd reads the key file at each login); the
tenant's live SSH sessions are ended at once (``keys.end_sessions``), every one but the
session that asked, because the helper cannot tell reliably which key a session came in with:
sshd's ``ExposeAuthInfo`` file is written as the tenant, so a tenant could change it.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from vpsshell.daemon.config import DaemonConfig, Limits
from vpsshell.daemon.keys import KeyFile, end_sessions, in_ssh_login
from vpsshell.daemon.operation import Request, Target, refuse_unknown
from vpsshell.daemon.operations import TenantServices, operation
from vpsshell.daemon.totp import TotpChecker, UsersFile, b32, otpauth_uri
from vpsshell.errors import ConfirmRequired, Denied, TemporaryFailure, UsageError

QRENCODE = "/usr/bin/qrencode"
QR_TIMEOUT_SECONDS = 5.0
FINGERPRINT_RE = re.compile(r"(?:SHA256:)?([A-Za-z0-9+/]{43})")


@dataclass
class SelfService:
    """What the self-service operations need from the helper's config."""

    keys_dir: str
    allow_removing_last: bool
    totp: TotpChecker

    @classmethod
    def from_config(cls, config: DaemonConfig) -> SelfService:
        limits = config.limits
        checker = TotpChecker(
            UsersFile(config.totp_users_file),
            attempts=limits.password_attempts,
            lockout_seconds=limits.password_lockout_seconds,
        )
        return cls(config.authorized_keys_dir, config.keys_allow_removing_last, checker)

    def key_file(self, user: str, limits: Limits) -> KeyFile:
        return KeyFile(
            self.keys_dir,
            user,
            max_keys=limits.keys_per_user,
            max_line_bytes=limits.key_line_bytes,
        )


def _service(api: TenantServices) -> SelfService:
    if api.self_service is None:
        raise Denied("keys and totp are not available here")
    return api.self_service


def _add_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"line"})
    untrusted_line = untrusted.get("line")
    if not isinstance(untrusted_line, str):
        raise UsageError("line: expected one public key line")
    if len(untrusted_line) > limits.key_line_bytes:
        raise UsageError(f"line: longer than {limits.key_line_bytes} bytes")
    return {"line": untrusted_line}


def _remove_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"fingerprint"})
    untrusted_fingerprint = untrusted.get("fingerprint")
    found = (
        FINGERPRINT_RE.fullmatch(untrusted_fingerprint)
        if isinstance(untrusted_fingerprint, str)
        else None
    )
    if found is None:
        raise UsageError("fingerprint: expected SHA256:... as keys shows it")
    return {"fingerprint": f"SHA256:{found.group(1)}"}


def _code_args(untrusted: dict[str, Any], limits: Limits) -> dict[str, Any]:
    refuse_unknown(untrusted, {"code"})
    untrusted_code = untrusted.get("code")
    if not isinstance(untrusted_code, str) or not re.fullmatch(r"[0-9]{6}", untrusted_code):
        raise UsageError("code: expected the 6 digits your authenticator shows")
    return {"code": untrusted_code}


@operation("keys", action="keys")
async def op_keys(api: TenantServices, request: Request, target: Target | None) -> Any:
    """The caller's SSH public keys, as sshd will read them at the next login."""
    user = request.caller.user
    try:
        entries = await asyncio.to_thread(_service(api).key_file(user, api.limits).entries)
    except OSError as exc:
        raise TemporaryFailure(f"your key file cannot be read ({exc}); try later") from None
    return {
        "user": user,
        "keys": [entry.to_json() for entry in entries],
        "max": api.limits.keys_per_user,
    }


@operation("keys-add", action="keys", args=_add_args)
async def op_keys_add(api: TenantServices, request: Request, target: Target | None) -> Any:
    """Add one key (checked in ``keys.parse_public_key``); it works from the next login."""
    key_file = _service(api).key_file(request.caller.user, api.limits)
    try:
        key = await asyncio.to_thread(key_file.add, request.args["line"])
    except OSError as exc:
        raise TemporaryFailure(f"the key file cannot be written ({exc}); try again later") from None
    request.audit["key"] = key.fingerprint
    request.audit["key_type"] = key.kind
    return {
        "message": f"added {key.fingerprint} ({key.kind}, {key.bits} bits); "
        "it works from your next login",
        "fingerprint": key.fingerprint,
    }


@operation("keys-remove", action="keys", args=_remove_args)
async def op_keys_remove(api: TenantServices, request: Request, target: Target | None) -> Any:
    """Remove one key; the caller's other live SSH sessions are ended (see the docstring)."""
    service = _service(api)
    caller = request.caller
    key_file = service.key_file(caller.user, api.limits)
    fingerprint = request.args["fingerprint"]
    request.audit["key"] = fingerprint
    # the last key: refused from an SSH login (it would lock the tenant out), unless allowed
    allow_last = service.allow_removing_last or not await asyncio.to_thread(
        in_ssh_login, caller.pid
    )
    try:
        await asyncio.to_thread(key_file.remove, fingerprint, allow_last=allow_last)
    except OSError as exc:
        raise TemporaryFailure(f"the key file cannot be written ({exc}); try again later") from None
    ended = await asyncio.to_thread(end_sessions, caller.uid, caller.pid)
    request.audit["sessions_ended"] = ended
    return {
        "message": f"removed {fingerprint}; it no longer logs in"
        + (f"; {ended} other session process(es) of yours ended" if ended else ""),
        "fingerprint": fingerprint,
        "sessions_ended": ended,
    }


@operation("totp")
async def op_totp(api: TenantServices, request: Request, target: Target | None) -> Any:
    """Whether the caller has a second factor."""
    user = request.caller.user
    enrolled = await asyncio.to_thread(_service(api).totp.enrolled, user)
    return {"user": user, "enrolled": enrolled}


@operation("totp-enroll")
async def op_totp_enroll(api: TenantServices, request: Request, target: Target | None) -> Any:
    """A new secret, shown once (and as a QR code), pending until ``totp-confirm``. A tenant
    who has one already gives a code of it first (so a left-open session cannot replace it)."""
    checker = _service(api).totp
    caller = request.caller
    try:
        enrolled = await asyncio.to_thread(checker.enrolled, caller.user)
    except OSError as exc:
        raise TemporaryFailure(f"the second factor cannot be read ({exc}); try later") from None
    if enrolled:
        request.audit["confirm"] = "totp"
        locked = checker.locked_for(caller.uid)
        if locked > 0:
            raise TemporaryFailure(f"too many wrong codes; try again in {int(locked) + 1} s")
        if request.password is None:
            raise ConfirmRequired("replacing your second factor needs a code of the current one")
        if not checker.check(caller.uid, caller.user, request.password):
            raise ConfirmRequired("code not accepted")
    secret = checker.begin(caller.uid)
    uri = otpauth_uri(caller.user, secret, socket.gethostname())
    request.audit["totp"] = "enroll"
    return {
        "secret": b32(secret),
        "uri": uri,
        "qr": await _qr_lines(uri),
        "message": "add it to your authenticator app, then run: totp confirm CODE",
    }


@operation("totp-confirm", args=_code_args)
async def op_totp_confirm(api: TenantServices, request: Request, target: Target | None) -> Any:
    checker = _service(api).totp
    caller = request.caller
    locked = checker.locked_for(caller.uid)
    if locked > 0:
        raise TemporaryFailure(f"too many wrong codes; try again in {int(locked) + 1} s")
    try:
        accepted = await asyncio.to_thread(
            checker.finish, caller.uid, caller.user, request.args["code"]
        )
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise TemporaryFailure(f"the second factor cannot be saved ({exc}); try later") from None
    request.audit["totp"] = "confirm"
    if not accepted:
        raise Denied("code not accepted; check the time on your device and try again")
    return {"message": "second factor enrolled: logins that require it ask for a code"}


async def _qr_lines(text: str) -> list[str] | None:
    """``text`` as a QR code in UTF-8 block characters (qrencode), or None without qrencode."""
    if not os.path.exists(QRENCODE):
        return None
    process = await asyncio.create_subprocess_exec(
        QRENCODE,
        "-t",
        "UTF8",
        "-m",
        "2",
        "-o",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={},
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(text.encode()), QR_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        return None
    if process.returncode != 0:
        return None
    return out.decode("utf-8", errors="replace").splitlines()
