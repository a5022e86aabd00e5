"""The policy directory as the admin tools change it: lock, read, validate with edits, install.

Every change goes through the same steps: take the directory's lock (``flock`` on a hidden
file, which the helper ignores), validate the whole directory with the new text in place of
the old (``load_with_overlay``: the helper's own loader, with all its limits), check the file
did not change underneath, then install it atomically (a hidden temporary file in the same
directory, owner root, mode 0644, ``fsync``, ``rename``). A policy that does not validate is
never installed. This module must never follow a symbolic link when reading or writing a
policy file, and never leave a half-written file under a name the helper reads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Mapping
from types import TracebackType

from vpsshell.admin.context import AdminError, AdminExit
from vpsshell.policy import Policy, is_policy_file_name, load_policy_dir
from vpsshell.policy.model import MAX_FILE_BYTES

#: Hidden, so the helper's loader ignores it; flock()ed by every command that changes files.
LOCK_NAME = ".vpsshell-admin.lock"
#: What ``policy edit`` opens when no FILE is given.
DEFAULT_EDIT_FILE = "50-local.policy"

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class PolicyLock:
    """Exclusive, non-blocking lock on the policy directory (``with PolicyLock(dir):``)."""

    def __init__(self, policy_dir: str) -> None:
        self.path = os.path.join(policy_dir, LOCK_NAME)
        self._fd: int | None = None

    def __enter__(self) -> PolicyLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AdminError(f"cannot open the policy lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise AdminError(
                f"the policy is being changed by another vpsshell-admin{who}; "
                f"try again when it is done (lock: {self.path})",
                AdminExit.BUSY,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def read_policy_file(policy_dir: str, name: str) -> bytes | None:
    """The current bytes of ``name`` in the directory, None if it does not exist.

    Refuses (AdminError) a symbolic link, a non-regular file or an oversized file: the helper
    would refuse it too, and an admin tool must not edit through a link.
    """
    try:
        fd = os.open(os.path.join(policy_dir, name), _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AdminError(f"{name}: is a symbolic link; replace it with a file") from None
        raise AdminError(f"{name}: cannot open: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AdminError(f"{name}: not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise AdminError(f"{name}: larger than {MAX_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def policy_file_names(policy_dir: str) -> list[str]:
    """The names the helper reads, sorted (empty if the directory cannot be listed)."""
    try:
        return sorted(name for name in os.listdir(policy_dir) if is_policy_file_name(name))
    except OSError:
        return []


def read_texts(policy_dir: str) -> dict[str, str]:
    """Every readable policy file's text, by name, in load order (unreadable ones left out)."""
    texts: dict[str, str] = {}
    for name in policy_file_names(policy_dir):
        try:
            data = read_policy_file(policy_dir, name)
        except AdminError:
            continue
        if data is None:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def load_with_overlay(
    policy_dir: str, overlay: Mapping[str, str | None], trusted_uids: frozenset[int]
) -> Policy:
    """The directory's policy as the helper would load it with ``overlay`` installed.

    ``overlay`` maps file names to their new text (None: the file is removed). The whole
    directory is loaded by the helper's own loader with the change laid over it, so every
    check and limit the helper applies (owners and modes of the other files, file and
    directory sizes, number of files, number of rules, sets) decides here too: a change that
    would leave the helper with a broken policy shows up as errors.
    """
    return load_policy_dir(policy_dir, trusted_uids=trusted_uids, overlay=overlay)


def resolve_target(policy_dir: str, argument: str) -> str:
    """The policy file name an admin means by ``argument`` (a name or a path in the directory)."""
    name = argument
    if "/" in argument:
        directory = os.path.realpath(policy_dir)
        if os.path.realpath(os.path.dirname(os.path.abspath(argument))) != directory:
            raise AdminError(f"{argument}: not in the policy directory {policy_dir}")
        name = os.path.basename(argument)
    if not is_policy_file_name(name):
        raise AdminError(
            f"{name}: not a policy file name; the helper reads only names like "
            "10-tenants.policy (lower-case letters, digits, _ . -, ending in .policy)",
            AdminExit.USAGE,
        )
    return name


def install_policy_file(policy_dir: str, name: str, text: str) -> None:
    """Atomically replace ``name`` in the directory with ``text`` (root-owned, mode 0644)."""
    dir_fd = os.open(policy_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"  # hidden: never read by the helper
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            try:
                os.write(fd, text.encode("utf-8"))
                if os.geteuid() == 0:
                    os.fchown(fd, 0, 0)
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
