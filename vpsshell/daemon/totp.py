"""The second factor: TOTP secrets (RFC 6238) in pam_oath's users file, enrolment, and codes.

Tenants log in with key + code through Debian's ``libpam-oath`` (``pam_oath.so``), whose users
file (``totp_users_file``, default /etc/vpsshell/totp/users.oath) is root-owned, mode 0600: the
helper, as root, writes a tenant's secret there when they enrol (``totp enroll`` shows a new
secret, kept pending in the helper's memory; ``totp confirm CODE`` with a code from the app
writes it), so a tenant never writes a file and never sees another tenant's secret. The file is
changed the way liboath changes it (``FILE.lock`` created exclusively and removed after, a new
file renamed into place), so a login that updates the same file meanwhile is never lost.

``confirm=totp`` codes are checked here, in the helper: the secret from the users file, a code
of the current 30-second step or the one either side, each step accepted once per tenant, and
the ``confirm=password`` lockout (``password_attempts`` wrong codes, ``password_lockout_seconds``).
Secrets are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
import time
import urllib.parse
from dataclasses import dataclass, field

STEP_SECONDS = 30
DIGITS = 6
SECRET_BYTES = 20  # RFC 4226's recommended 160 bits
#: steps either side of now that are accepted (clock drift of the tenant's phone)
DRIFT_STEPS = 1
PENDING_SECONDS = 600  # a shown secret must be confirmed within this long
LOCK_WAIT_SECONDS = 5.0  # for pam_oath to finish with the users file
TOKEN_TYPE = f"HOTP/T{STEP_SECONDS}/{DIGITS}"
ISSUER = "vpsshell"


def totp_code(secret: bytes, at: float, step: int = STEP_SECONDS, digits: int = DIGITS) -> str:
    """The RFC 6238 code (HMAC-SHA1, like every authenticator app's default) at time ``at``."""
    counter = int(at // step)
    digest = hmac.new(secret, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def matching_step(secret: bytes, untrusted_code: str, at: float) -> int | None:
    """The time step whose code is ``untrusted_code`` (now, or DRIFT_STEPS either side)."""
    if len(untrusted_code) != DIGITS or not untrusted_code.isdigit():
        return None
    now_step = int(at // STEP_SECONDS)
    for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp_code(secret, step * STEP_SECONDS), untrusted_code):
            return step
    return None


def otpauth_uri(user: str, secret: bytes, host: str) -> str:
    """What an authenticator app reads from the QR code (Key Uri Format)."""
    label = urllib.parse.quote(f"{ISSUER}:{user}@{host}")
    params = urllib.parse.urlencode(
        {"secret": b32(secret), "issuer": ISSUER, "digits": DIGITS, "period": STEP_SECONDS}
    )
    return f"otpauth://totp/{label}?{params}"


def b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")


class UsersFile:
    """pam_oath's users file: ``HOTP/T30/6 USER - HEXSECRET [COUNTER [TIME]]`` per line."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
            return fh.read(16 * 1024 * 1024).splitlines()

    def secret_of(self, user: str) -> bytes | None:
        for line in self._lines():
            fields = line.split()
            if len(fields) >= 4 and fields[1] == user and fields[0].startswith("HOTP/T"):
                with contextlib.suppress(ValueError):
                    return bytes.fromhex(fields[3])
        return None

    def set_secret(self, user: str, secret: bytes | None) -> None:
        """Replace ``user``'s line (None: remove it), locked as liboath locks the file: it
        creates ``FILE.lock`` exclusively and removes it when done (a lock file left behind
        makes pam_oath fail), so the helper does the same and waits for pam_oath's."""
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        lock = f"{self.path}.lock"
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                lock_fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise OSError(f"{lock} is held (left behind by a crash? remove it)") from None
                time.sleep(0.05)
        try:
            kept = [
                line
                for line in self._lines()
                if not (len(line.split()) >= 2 and line.split()[1] == user)
            ]
            if secret is not None:
                kept.append(f"{TOKEN_TYPE} {user} - {secret.hex()}")
            tmp = f"{self.path}.vpsshell-new"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, "".join(f"{line}\n" for line in kept).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        finally:
            os.unlink(lock)
            os.close(lock_fd)


@dataclass
class _Pending:
    secret: bytes
    until: float


@dataclass
class TotpChecker:
    """Enrolment and ``confirm=totp`` codes, for the helper (see the module docstring)."""

    users_file: UsersFile
    attempts: int
    lockout_seconds: float
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _last_step: dict[int, int] = field(default_factory=dict)
    _failures: dict[int, int] = field(default_factory=dict)
    _locked_until: dict[int, float] = field(default_factory=dict)

    def enrolled(self, user: str) -> bool:
        return self.users_file.secret_of(user) is not None

    def begin(self, uid: int) -> bytes:
        """A new secret for ``uid``, pending until confirmed with one of its codes."""
        secret = secrets.token_bytes(SECRET_BYTES)
        self._pending[uid] = _Pending(secret, time.monotonic() + PENDING_SECONDS)
        return secret

    def locked_for(self, uid: int) -> float:
        return max(0.0, self._locked_until.get(uid, 0.0) - time.monotonic())

    def _counted(self, uid: int, step: int | None) -> bool:
        """Count one attempt: True if ``step`` is a step not used before; a wrong code counts
        towards the lockout."""
        if step is not None and step > self._last_step.get(uid, -1):
            self._last_step[uid] = step
            self._failures.pop(uid, None)
            return True
        failures = self._failures.get(uid, 0) + 1
        self._failures[uid] = failures
        if failures >= self.attempts:
            self._failures.pop(uid, None)
            self._locked_until[uid] = time.monotonic() + self.lockout_seconds
        return False

    def finish(self, uid: int, user: str, untrusted_code: str) -> bool:
        """Confirm the pending secret with a code from it; on success it is the tenant's."""
        pending = self._pending.get(uid)
        if pending is None or pending.until < time.monotonic():
            self._pending.pop(uid, None)
            raise LookupError("no enrolment under way (run: totp enroll)")
        if not self._counted(uid, matching_step(pending.secret, untrusted_code, time.time())):
            return False
        self.users_file.set_secret(user, pending.secret)
        del self._pending[uid]
        return True

    def check(self, uid: int, user: str, untrusted_code: str) -> bool:
        """Is ``untrusted_code`` a code of ``user``'s secret not used before (counted)?"""
        secret = self.users_file.secret_of(user)
        step = None if secret is None else matching_step(secret, untrusted_code, time.time())
        return self._counted(uid, step)
