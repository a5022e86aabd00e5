"""Per-domain console log files: bounded in size and count, rotated, readable by ``log``.

Files live in the console log directory as ``NAME.log`` (newest) and ``NAME.log.1`` ...
``NAME.log.N`` (older). The name has been validated as a domain name (no ``/``), and files are
opened with ``O_NOFOLLOW``: a symlink planted in the directory is refused, never followed.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vpsshell.console")

MAX_READ_BYTES = 4 * 1024 * 1024


class ConsoleLog:
    def __init__(self, directory: str, name: str, max_bytes: int, files: int) -> None:
        self.path = os.path.join(directory, f"{name}.log")
        self.directory = directory
        self.max_bytes = max_bytes
        self.files = files
        self._fd: int | None = None
        self._size = 0
        self._failed = False

    def _open(self) -> int:
        if self._fd is None:
            os.makedirs(self.directory, mode=0o750, exist_ok=True)
            self._fd = os.open(
                self.path,
                os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
            )
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _rotate(self) -> None:
        self.close()
        # Drop the oldest first so every rename below goes to a free name: renaming over an
        # existing file makes ext4 flush the renamed file's data (auto_da_alloc), which stalls
        # the helper's event loop for milliseconds on each rotation.
        oldest = f"{self.path}.{self.files - 1}"
        if self.files > 1 and os.path.lexists(oldest):
            os.unlink(oldest)
        for index in range(self.files - 1, 0, -1):
            older = f"{self.path}.{index}"
            newer = self.path if index == 1 else f"{self.path}.{index - 1}"
            if os.path.lexists(newer):
                os.replace(newer, older)
        if self.files <= 1 and os.path.lexists(self.path):
            os.unlink(self.path)

    def append(self, data: bytes) -> None:
        """Append guest output; failures are logged once and never stop the console."""
        try:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                self._rotate()
            fd = self._open()
            os.write(fd, data[-self.max_bytes :])
            self._size += min(len(data), self.max_bytes)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write console log %s: %s", self.path, exc)
            self._failed = True
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def tail(self, lines: int) -> list[str]:
        """The last ``lines`` lines (current file, then rotated ones as needed), as text."""
        chunks: list[bytes] = []
        total = 0
        for index in range(self.files):
            path = self.path if index == 0 else f"{self.path}.{index}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                break
            try:
                size = os.fstat(fd).st_size
                want = min(size, MAX_READ_BYTES - total)
                os.lseek(fd, size - want, os.SEEK_SET)
                data = b""
                while len(data) < want:
                    piece = os.read(fd, want - len(data))
                    if not piece:
                        break
                    data += piece
            finally:
                os.close(fd)
            chunks.insert(0, data)
            total += len(data)
            if b"".join(chunks).count(b"\n") > lines or total >= MAX_READ_BYTES:
                break
        text = b"".join(chunks).decode("utf-8", errors="replace").replace("\r", "")
        result = text.split("\n")
        if result and result[-1] == "":
            result.pop()
        return result[-lines:] if lines else []
