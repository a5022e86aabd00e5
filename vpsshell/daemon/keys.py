"""Tenants' SSH public keys: checking a key line, and the root-owned file sshd reads them from.

One file per tenant, ``AUTHORIZED_KEYS_DIR/USER`` (the shipped sshd Match block's
``AuthorizedKeysFile /etc/vpsshell/authorized_keys/%u``), root-owned, mode 0644, written whole
and renamed into place, so sshd reads either the old file or the new one, never half of one. The
helper (``keys`` verb) and ``vpsshell-admin keys`` both change it through ``KeyFile``, under the
same lock, with the same checks.

A key line from a tenant (``untrusted_line``) becomes at most ``KEY_TYPE BASE64 COMMENT``, with
the base64 written anew from the decoded key and the comment stripped to printable text: a
tenant can never add options (``command=``, ``from=``, ``permitopen=``...), a second line, or
anything sshd would read as more than one key. paramiko must parse the key, and its type must be
one of ``ALLOWED_TYPES`` (no DSA, no RSA under ``RSA_MIN_BITS``, no certificates). Lines the
admin wrote by hand (options among them) are kept as they are and listed, never rewritten.

paramiko is imported here only, and this module only by the helper and the admin tool: the
tenant's shell (``vpsshell -c``) must start fast and never loads it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vpsshell.errors import UsageError

ED25519 = "ssh-ed25519"
RSA = "ssh-rsa"
ECDSA_TYPES = ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
#: Key types a tenant may add. DSA (``ssh-dss``) is refused: 1024 bits, disabled by OpenSSH
#: since 7.0; certificates need a CA setup (TrustedUserCAKeys), not a key file.
ALLOWED_TYPES = (ED25519, RSA, *ECDSA_TYPES)
#: NIST SP 800-57 and OpenSSH's own default for new keys (ssh-keygen makes 3072 since 8.0)
RSA_MIN_BITS = 3072
COMMENT_MAX_CHARS = 200
HEADER = (
    "# Keys of {user}: written by vpsshell (keys, vpsshell-admin keys); edits by hand are kept\n"
)
ADDED_PREFIX = "# vpsshell-added "
#: A user name as a file name: what NSS allows for a login, never a path.
_USER_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?")
_KEY_TYPE_RE = re.compile(r"[a-z0-9][a-z0-9@.-]{0,63}")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]")


class KeyRefused(UsageError):
    """A key line that may not be added (the message says why, for the tenant)."""


@dataclass(frozen=True)
class PublicKey:
    """A checked key: what is written to the file is ``line``."""

    kind: str
    blob: bytes
    bits: int
    comment: str

    @property
    def fingerprint(self) -> str:
        """As ``ssh-keygen -l`` shows it: SHA256 of the key blob, base64 without padding."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"

    @property
    def line(self) -> str:
        text = f"{self.kind} {base64.b64encode(self.blob).decode()}"
        return f"{text} {self.comment}" if self.comment else text


def parse_public_key(untrusted_line: str, max_bytes: int) -> PublicKey:
    """The key on ``untrusted_line`` (one OpenSSH public key line, ``TYPE BASE64 [COMMENT]``),
    checked; ``KeyRefused`` says why not."""
    if len(untrusted_line.encode("utf-8", errors="replace")) > max_bytes:
        raise KeyRefused(f"the key line is longer than {max_bytes} bytes")
    text = untrusted_line.strip()
    if "\n" in text or "\r" in text or "\0" in text:
        raise KeyRefused("one key per line, please (give one public key line)")
    fields = text.split(None, 2)
    if not fields:
        raise KeyRefused("no key given (one line such as the content of ~/.ssh/id_ed25519.pub)")
    kind = fields[0]
    if kind not in ALLOWED_TYPES:
        if any(f in ALLOWED_TYPES or f == "ssh-dss" for f in text.split()[1:3]) or "=" in kind:
            raise KeyRefused("key options (command=, from=...) are not allowed; give the key only")
        if kind == "ssh-dss":
            raise KeyRefused("DSA keys are not accepted (weak); make one: ssh-keygen -t ed25519")
        if kind.endswith("-cert-v01@openssh.com"):
            raise KeyRefused("certificates are not accepted here; give the plain public key")
        if kind.startswith("-----") or kind.startswith("PuTTY"):
            raise KeyRefused("that is a private key or not an OpenSSH public key; give the .pub")
        shown = kind if _KEY_TYPE_RE.fullmatch(kind) else "this"
        raise KeyRefused(f"{shown} is not a key type accepted here ({', '.join(ALLOWED_TYPES)})")
    if len(fields) < 2:
        raise KeyRefused("the key's base64 part is missing")
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise KeyRefused("the key's base64 part is not valid base64") from None
    bits = _checked_bits(kind, blob)
    comment = _UNPRINTABLE.sub("", fields[2] if len(fields) > 2 else "").strip()
    return PublicKey(kind, blob, bits, comment[:COMMENT_MAX_CHARS])


def _checked_bits(kind: str, blob: bytes) -> int:
    """The key's size in bits, once paramiko has parsed ``blob`` as a ``kind`` key (the type
    written inside the blob must be ``kind`` too)."""
    import paramiko

    try:
        key = paramiko.PKey.from_type_string(kind, blob)
    except Exception:  # paramiko raises several types for a malformed blob
        raise KeyRefused(f"not a valid {kind} key") from None
    if key.asbytes() != blob:  # paramiko pads a short blob with zeros and ignores extra bytes
        raise KeyRefused(f"not a valid {kind} key (truncated or with bytes after it)")
    bits = int(key.get_bits())
    if kind == RSA and bits < RSA_MIN_BITS:
        raise KeyRefused(
            f"RSA keys need at least {RSA_MIN_BITS} bits (this one has {bits}); "
            "make one: ssh-keygen -t ed25519"
        )
    return bits


@dataclass
class KeyEntry:
    """One line of a key file: a key vpsshell can show, or a line kept as the admin wrote it."""

    line: str
    key: PublicKey | None  # None: not a plain key line (options, an unknown type)
    added: str | None  # UTC time vpsshell added it, if it did

    def to_json(self) -> dict[str, Any]:
        if self.key is None:
            return {
                "type": None,
                "bits": None,
                "fingerprint": None,
                "comment": None,
                "added": self.added,
                "note": "kept as written (options or another type)",
            }
        return {
            "type": self.key.kind,
            "bits": self.key.bits,
            "fingerprint": self.key.fingerprint,
            "comment": self.key.comment,
            "added": self.added,
        }


def key_file_name(user: str) -> str:
    """``user`` as a file name in the keys directory (never a path)."""
    if not _USER_FILE_RE.fullmatch(user):
        raise UsageError(f"{user!r}: not a user name vpsshell keeps keys for")
    return user


def parse_key_file(text: str, max_bytes: int) -> list[KeyEntry]:
    entries: list[KeyEntry] = []
    added: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(ADDED_PREFIX):
            added = line[len(ADDED_PREFIX) :].strip()[:32] or None
            continue
        if not line or line.startswith("#"):
            continue
        try:
            key: PublicKey | None = parse_public_key(line, max_bytes)
        except UsageError:
            key = None
        entries.append(KeyEntry(line, key, added))
        added = None
    return entries


def render_key_file(user: str, entries: list[KeyEntry]) -> str:
    out = [HEADER.format(user=user)]
    for entry in entries:
        if entry.added:
            out.append(f"{ADDED_PREFIX}{entry.added}\n")
        out.append(entry.line + "\n")
    return "".join(out)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KeyFile:
    """One tenant's key file in ``directory``; every change is read-check-write under an
    exclusive lock on the directory (helper and admin tool alike), and written atomically."""

    def __init__(self, directory: str, user: str, *, max_keys: int, max_line_bytes: int) -> None:
        self.directory = directory
        self.user = user
        self.path = os.path.join(directory, key_file_name(user))
        self.max_keys = max_keys
        self.max_line_bytes = max_line_bytes

    def entries(self) -> list[KeyEntry]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OSError(f"{self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise OSError(f"{self.path}: not a regular file")
            raw = fh.read(self.max_keys * (self.max_line_bytes + 64) * 2 + 4096)
        return parse_key_file(raw.decode("utf-8", errors="replace"), self.max_line_bytes)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def add(self, untrusted_line: str) -> PublicKey:
        """Check the key and add it; ``KeyRefused`` if it may not be added."""
        key = parse_public_key(untrusted_line, self.max_line_bytes)
        with self._locked():
            entries = self.entries()
            if any(e.key is not None and e.key.blob == key.blob for e in entries):
                raise KeyRefused(f"{key.fingerprint} is already one of your keys")
            if len(entries) >= self.max_keys:
                raise KeyRefused(
                    f"you have {len(entries)} keys, the most allowed; remove one first"
                )
            entries.append(KeyEntry(key.line, key, _now()))
            self._write(entries)
        return key

    def remove(self, fingerprint: str, *, allow_last: bool) -> KeyEntry:
        """Remove the key with that fingerprint (``SHA256:...``); refused for the last key
        unless ``allow_last``."""
        with self._locked():
            entries = self.entries()
            found = [e for e in entries if e.key is not None and e.key.fingerprint == fingerprint]
            if not found:
                raise KeyRefused(f"{fingerprint[:60]}: not one of your keys (see: keys)")
            if len(entries) == 1 and not allow_last:
                raise KeyRefused(
                    "that is your last key: add another first (removing it would lock you out)"
                )
            self._write([e for e in entries if e is not found[0]])
        return found[0]

    def _write(self, entries: list[KeyEntry]) -> None:
        data = render_key_file(self.user, entries).encode()
        tmp = os.path.join(self.directory, f".{os.path.basename(self.path)}.vpsshell-new")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.fchmod(fd, 0o644)  # sshd reads it as the tenant only through its own root
            if os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _status_uid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])  # the real uid
    except (OSError, ValueError, IndexError):
        return None
    return None


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # the command name may hold spaces and parentheses: fields start after the last ")"
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


MAX_ANCESTORS = 64


def in_ssh_login(pid: int) -> bool:
    """Whether ``pid`` runs under an sshd session (an ancestor named sshd): a tenant who
    removes their last key from there would lock themselves out. The names can be forged, but
    only to bypass the tenant's own safety net, never anyone else's."""
    for _ in range(MAX_ANCESTORS):
        pid = _parent(pid)
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/comm") as fh:
                if fh.read().strip() == "sshd":
                    return True
        except OSError:
            return False
    return False


def end_sessions(uid: int, keep_pid: int | None = None) -> int:
    """End every live session of ``uid``: signal each process it runs (for a tenant these are
    the login shells and the per-connection sshd processes that run as the tenant, whose end
    closes the connection). With ``keep_pid``, the process that asked, its ancestors and the
    processes of its session are left alone. Returns how many processes were signalled.
    Never for root: root is no tenant, and signalling every root process would stop the host."""
    if uid == 0:
        return 0
    kept: set[int] = set()
    keep_sid = None
    if keep_pid is not None:
        pid = keep_pid
        while pid > 1 and pid not in kept:
            kept.add(pid)
            pid = _parent(pid)
        with contextlib.suppress(OSError):
            keep_sid = os.getsid(keep_pid)
    ended = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in kept or _status_uid(pid) != uid:
            continue
        with contextlib.suppress(OSError):
            if keep_sid is not None and os.getsid(pid) == keep_sid:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGHUP)
            os.kill(pid, signal.SIGTERM)
            ended += 1
    return ended
