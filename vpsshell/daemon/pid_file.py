"""The helper's pid file (``pid_file``): the running helper's pid, locked for as long as it runs.

The lock (``flock``), not the file's presence, says that a helper runs: a file left behind by a
helper that died is unlocked, and the next helper takes it over; a locked one belongs to a
helper that runs (or is starting) with the same ``pid_file``, and a second one refuses to
start before it opens anything else. The descriptor is close-on-exec, so no hook or ``xl``
process can keep the lock after the helper ends. Tools that signal the helper should check
the lock too (``pkill -F FILE --logpidfile``, as the shipped logrotate config does), so a
stale pid that the kernel gave to another process is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


class PidFileLocked(RuntimeError):
    """Another helper holds the pid file."""


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Lock the file and write our pid into it, or raise ``PidFileLocked``."""
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise PidFileLocked(
                    f"another helper is already listening or starting: pid {holder} holds "
                    f"{self.path}"
                ) from None
            # a helper that stopped between our open and our lock removed the file we hold:
            # lock the one at the path now
            if self._is_at_path(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def _is_at_path(self, fd: int) -> bool:
        try:
            at_path = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the file, then let go of the lock (in that order: a helper starting
        meanwhile finds either our locked file or none)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
