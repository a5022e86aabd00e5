"""A Xen domain's serial console: the pty that xenconsoled publishes, opened by the helper.

xenconsoled connects each domain's console ring to a pty and writes the slave's path to
``/local/domain/ID/console/tty``. The helper opens that pty itself (non-blocking, raw, never as
a controlling terminal) and proxies it into the console hub; the tenant never gets the file
descriptor. The path is checked before it is opened: the XenStore node must belong to dom0
(a guest cannot write it), the path must be ``/dev/pts/N``, and the opened file must be a pty
slave (a character device with a UNIX98 pty major).

Like ``xl console``, the helper takes ``/var/lock/xenconsole.ID`` (flock, non-blocking), so the
two never read the same pty at once and split the output between them: while an admin's
``xl console`` is attached the tenant console waits, and while the helper holds a console
``xl console`` says the lock is taken. The stream ends when xenconsoled closes the pty (the
domain went away: a shutdown, or a reboot, after which the domain has a new id and a new pty);
the hub then opens the console again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import termios

from vpsshell.backends.base import ConsoleStream
from vpsshell.backends.output_buffer import OutputBuffer
from vpsshell.errors import ActionFailed, TemporaryFailure

logger = logging.getLogger("vpsshell.xen")

XENCONSOLE_LOCK_DIR = "/var/lock"  # XEN_LOCK_DIR of Debian's and upstream's xenconsole
PTY_PATH_RE = re.compile(r"/dev/pts/[0-9]{1,7}\Z")
PTY_SLAVE_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. + UNIX98_PTY_MAJOR_COUNT
OUTPUT_LIMIT_BYTES = 1 << 20  # guest output queued for a reader that does not keep up
INPUT_LIMIT_BYTES = 64 * 1024  # keystrokes queued for a guest that does not read them
READ_CHUNK_BYTES = 64 * 1024
READS_PER_WAKEUP = 16


def lock_path(domid: int) -> str:
    return f"{XENCONSOLE_LOCK_DIR}/xenconsole.{int(domid)}"


def take_console_lock(domid: int, label: str) -> int:
    """xl console's lock for this domain id; raises TemporaryFailure while someone has it."""
    path = lock_path(domid)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TemporaryFailure(
            f"the console of {label} is in use by an administrator (xl console); "
            "it comes back when they leave"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_console_lock(domid: int, fd: int) -> None:
    # unlink while still holding the lock, as xl console does on exit
    with contextlib.suppress(OSError):
        os.unlink(lock_path(domid))
    with contextlib.suppress(OSError):
        os.close(fd)


def open_pty(path: str, label: str) -> int:
    """Open a console pty slave non-blocking and raw; refuses anything that is not one."""
    if not PTY_PATH_RE.match(path):
        raise ActionFailed(f"{label}: its console is not a pty ({path[:40]!r})")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise TemporaryFailure(f"{label}: cannot open its console: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode) or os.major(st.st_rdev) not in PTY_SLAVE_MAJORS:
            raise ActionFailed(f"{label}: its console is not a pty")
        make_raw(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_raw(fd: int) -> None:
    """cfmakeraw + TCSANOW (tty.setraw would flush output the guest already wrote)."""
    attrs = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    attrs[0], attrs[1], attrs[2], attrs[3] = iflag, oflag, cflag, lflag
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class XenConsoleStream(ConsoleStream):
    """One open console pty of one domain id, read and written on the asyncio loop."""

    def __init__(
        self, fd: int, lock_fd: int, domid: int, label: str, limit: int = OUTPUT_LIMIT_BYTES
    ) -> None:
        self.fd = fd
        self.domid = domid
        self.label = label
        self._lock_fd = lock_fd
        self._loop = asyncio.get_running_loop()
        self._output = OutputBuffer(limit)
        self._outbox = bytearray()
        self._writing = False
        self.closed = False
        self._loop.add_reader(fd, self._on_readable)

    @property
    def ended(self) -> bool:
        """No more output will come (the pty closed, or this stream did)."""
        return self._output.ended

    @property
    def dropped_bytes(self) -> int:
        return self._output.dropped_bytes

    async def read(self) -> bytes:
        return await self._output.get()

    async def write(self, data: bytes) -> None:
        if self.ended:
            raise ActionFailed(f"the console of {self.label} is closed")
        room = INPUT_LIMIT_BYTES - len(self._outbox)
        if room <= 0:
            return  # the guest reads nothing: drop keystrokes rather than grow forever
        self._outbox += data[:room]
        self._flush()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.end("closed")
        self._output.end(discard=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        release_console_lock(self.domid, self._lock_fd)

    def end(self, why: str) -> None:
        """No more output: the pty closed, or the backend saw this domain id go away."""
        if self.ended:
            return
        logger.debug("console of %s (domain %d) ended: %s", self.label, self.domid, why)
        self._output.end()
        self._outbox.clear()
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        if self._writing:
            with contextlib.suppress(Exception):
                self._loop.remove_writer(self.fd)
            self._writing = False

    def _on_readable(self) -> None:
        for _ in range(READS_PER_WAKEUP):
            try:
                data = os.read(self.fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:  # EIO: xenconsoled closed the pty (the domain went away)
                self.end(errno.errorcode.get(exc.errno or 0, str(exc)))
                return
            if not data:
                self.end("end of file")
                return
            self._output.put(data)

    def _flush(self) -> None:
        while self._outbox and not self.ended:
            try:
                sent = os.write(self.fd, self._outbox)
            except BlockingIOError:
                break
            except OSError as exc:
                self.end(f"write failed: {exc.strerror}")
                return
            del self._outbox[:sent]
        want = bool(self._outbox) and not self.ended
        if want and not self._writing:
            self._loop.add_writer(self.fd, self._flush)
            self._writing = True
        elif not want and self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False
