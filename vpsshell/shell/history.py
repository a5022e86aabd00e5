"""The interactive shell's command history: ``~/.vpsshell_history``, private to its user.

The file is created mode 0600 without following symlinks, and used only if it is a regular
file owned by the caller (an old file readable by others is made private first). Only lines
that pass the grammar's character check are stored, one per line, so the file can never hold a
control character or a line break inside an entry. If anything about the file is wrong, or
``history = false`` in the client config, history lives in memory for this session only.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable

from prompt_toolkit.history import History, InMemoryHistory

from vpsshell.errors import UsageError
from vpsshell.shell.grammar import check_characters

HISTORY_NAME = ".vpsshell_history"
MAX_READ_BYTES = 1 << 20


def history_path() -> str | None:
    """``$HOME/.vpsshell_history``; ``HOME`` falls back to the passwd entry."""
    home = os.environ.get("HOME")
    if not home:
        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            return None
    if not home or not os.path.isabs(home):
        return None
    return os.path.join(home, HISTORY_NAME)


def storable(line: str) -> bool:
    try:
        check_characters(line)
    except UsageError:
        return False
    return bool(line.strip())


class PrivateFileHistory(History):
    """Append-only history file, mode 0600, at most ``size`` lines loaded."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._size = size

    @classmethod
    def open(cls, path: str, size: int) -> PrivateFileHistory | None:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                os.close(fd)
                return None
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
        except OSError:
            os.close(fd)
            return None
        return cls(fd, size)

    def load_history_strings(self) -> Iterable[str]:
        try:
            size = os.fstat(self._fd).st_size
            data = os.pread(self._fd, MAX_READ_BYTES, max(0, size - MAX_READ_BYTES))
        except OSError:
            return []
        lines = [
            line for line in data.decode("ascii", errors="replace").splitlines() if storable(line)
        ]
        if len(lines) > self._size:
            lines = lines[-self._size :]
            self._compact(lines)
        return list(reversed(lines))  # newest first, as prompt_toolkit expects

    def _compact(self, lines: list[str]) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, "".join(f"{line}\n" for line in lines).encode("ascii"))
        except OSError:
            pass

    def store_string(self, string: str) -> None:
        if not storable(string):
            return
        try:
            os.write(self._fd, f"{string}\n".encode("ascii"))
        except OSError:
            pass


def build_history(enabled: bool, size: int) -> History:
    path = history_path() if enabled and size > 0 else None
    history = PrivateFileHistory.open(path, size) if path else None
    return history if history is not None else InMemoryHistory()
