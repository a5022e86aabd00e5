"""The tenant's end of a console session: terminal (or pipe) <-> helper, until it ends.

On a terminal, the terminal is put in raw mode and restored on every way out. Bytes pass raw in
both directions: no terminal emulation here either. The tenant's keystrokes go through the
escapes (``escapes.py``: ``~.``, ``~?``, ``~B``, ``~R``, ``~~`` at the start of a line, Ctrl-]
anywhere); keystrokes of a watcher are never sent. ``~B`` and ``~R`` are ordinary ``sysrq`` and
``reboot`` requests on a connection of their own (this one belongs to the stream): the helper's
policy decides, and a refusal is one local line; the session goes on.

A session ends, and always detaches cleanly (the helper is told, and answers before this
process exits, so a writer's slot is free for the next attach at once):

- Ctrl-] or the escape ``~.`` (exit 0);
- the end of the input: on a terminal that means the terminal is gone, so at once; on a pipe
  (``echo 'uname -a' | ssh host console web1``, no ``-t``) what came before it is sent, the
  console's output is shown until it has been quiet for ``QUIET_SECONDS`` (and for at most
  ``LINGER_SECONDS`` after the end of the input), then it detaches (exit 0);
- the tenant is gone: the reader of its output closed it or the terminal hung up (the ssh
  client went away), seen by ``poll`` or as EPIPE/EIO on a write; at once (exit 0);
- SIGHUP, SIGTERM or SIGQUIT: detach, restore the terminal, then the signal takes its course;
  SIGINT (only a ``kill``: in raw mode Ctrl-C is a byte for the guest): detach, exit 130;
- the helper closes the session: its reason decides the exit code (``outcome.session_end_code``);
- the helper stops answering: it pings (``{"event": "ping"}``, answered at once with a
  ``pong``) at the start and every ``seconds``; nothing at all from it for ``seconds`` times
  ``misses`` (the ping says both) and the session ends with a note (exit 69). A helper that
  never pings is never taken for gone.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from vpsshell import protocol
from vpsshell.errors import ExitCode, VpsError
from vpsshell.shell import escapes
from vpsshell.shell.environment import Environment
from vpsshell.shell.outcome import session_end_code
from vpsshell.shell.signals import GONE, Hangup, ending_signals, take_course

QUIET_SECONDS = 1.0  # after the end of piped input: detach once the console is this quiet...
LINGER_SECONDS = 10.0  # ...or this long after the end of the input, whichever comes first
DETACH_WAIT_SECONDS = 2.0  # how long a detach waits for the helper to confirm it


class TenantGone(Exception):
    """Nobody is left at the tenant's end: its output's reader closed, its terminal hung up."""


class HelperClosed(Exception):
    """The helper ended the session: the exit code and the text to show."""

    def __init__(self, code: ExitCode, note: str) -> None:
        super().__init__(note)
        self.code = code
        self.note = note


def _window_size(fd: int) -> tuple[int, int] | None:
    try:
        import fcntl
        import termios

        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return None


class _Flag:
    """Set by a signal handler (SIGWINCH), taken by the session loop."""

    def __init__(self) -> None:
        self._set = False

    def set(self, signum: int, frame: FrameType | None) -> None:
        self._set = True

    def take(self) -> bool:
        was, self._set = self._set, False
        return was


class _Link:
    """The helper connection and the tenant's output, as the session loop uses them."""

    def __init__(self, sock: socket.socket, stdout_fd: int) -> None:
        self.sock = sock
        self.stdout_fd = stdout_fd
        self.reader = protocol.FrameReader()
        self.tenant_gone = False
        self.last_output = time.monotonic()
        self.last_heard = time.monotonic()
        self.silence_bound: float | None = None  # from the helper's ping: None, never pinged

    def send(self, frame: bytes) -> None:
        """Blocking send; a helper that already closed its side is not an error here: its
        last frames (the reason it closed) are still to be read."""
        self.sock.setblocking(True)
        try:
            self.sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.sock.setblocking(False)

    def show(self, data: bytes) -> None:
        if self.tenant_gone:
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self.stdout_fd, view)
                view = view[written:]
        except OSError:  # EPIPE, EIO (a terminal that hung up)...: the output goes nowhere
            self.tenant_gone = True
            raise TenantGone() from None

    def receive(self) -> None:
        """Read what the helper sent and show it; raises ``HelperClosed`` at the end."""
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        if not chunk:
            raise HelperClosed(ExitCode.UNAVAILABLE, "the vpsshell helper closed the console")
        self.last_heard = time.monotonic()
        for frame_type, payload in self.reader.feed(chunk):
            if frame_type == protocol.FRAME_CONSOLE_DATA:
                self.last_output = time.monotonic()
                self.show(payload)
                continue
            message = protocol.decode_message(payload)
            text = str(message.get("text", ""))
            event = protocol.session_event(message)
            if event == protocol.EVENT_CLOSED:
                reason = str(message.get("reason", ""))
                raise HelperClosed(session_end_code(reason), text)
            if event == protocol.EVENT_PING:
                self.silence_bound = protocol.silence_bound(message)
                self.send(protocol.encode_message(protocol.pong()))
                continue
            from vpsshell.shell.render import inert

            self.show(f"\r\n[vpsshell: {inert(text)}]\r\n".encode())

    def check_helper_alive(self) -> None:
        """Raises ``HelperClosed`` (exit 69) once the helper has been silent past the bound its
        last ping gave."""
        bound = self.silence_bound
        if bound is not None and time.monotonic() - self.last_heard >= bound:
            raise HelperClosed(
                ExitCode.UNAVAILABLE,
                f"the vpsshell helper stopped answering (nothing from it for {bound:g} s)",
            )

    def detach(self) -> None:
        """Tell the helper, and wait (briefly) until it confirms: then the writer's slot is
        free. Output that arrives meanwhile is still shown, if anyone is left to see it."""
        self.send(protocol.encode_message(protocol.detach()))
        deadline = time.monotonic() + DETACH_WAIT_SECONDS
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(left * 1000):
                return
            try:
                self.receive()
            except (HelperClosed, TenantGone, OSError, protocol.ProtocolError, ValueError):
                return


Request = Callable[[str, dict[str, Any]], Any]  # one request to the helper: op, args -> result


def run_console(
    open_session: Callable[[], tuple[Any, socket.socket]],
    env: Environment,
    mode: str,
    *,
    escape: int = escapes.DEFAULT_ESCAPE,
    request: Request | None = None,
) -> ExitCode:
    """Open the console session (``open_session``: its result and the connection), proxy it
    until it ends; returns the exit code for how it ended. An error reply to the request
    propagates (a ``VpsError``). The signals that end a session are caught from before the
    request goes out, so that one arriving at any point ends it cleanly. ``escape`` is the
    escape character (``escapes.NO_ESCAPE``: none); ``request`` makes the requests of ``~B``
    and ``~R`` (without it they are refused locally)."""
    stdin_fd = env.stdin.fileno()
    stdout_fd = env.stdout.fileno()
    saved_attrs = None
    link: _Link | None = None
    code, note, hangup = ExitCode.UNAVAILABLE, "the vpsshell helper closed the console", 0
    resized = _Flag()
    previous_winch = signal.signal(signal.SIGWINCH, resized.set)
    try:
        with ending_signals():
            try:
                result, sock = open_session()
                link = _Link(sock, stdout_fd)
                env.stdout.flush()
                if env.stdin_isatty:
                    import termios
                    import tty

                    saved_attrs = termios.tcgetattr(stdin_fd)
                what = "Watching" if mode == "watch" else "Connected to"
                domain = result.get("domain") if isinstance(result, dict) else None
                if not env.stdin_isatty:
                    escape = escapes.NO_ESCAPE  # as ssh: escapes are for people, not pipes
                hint = ""
                if escape != escapes.NO_ESCAPE:
                    hint = f" After Enter, {escapes.escape_name(escape)}? lists the escapes."
                _tell(env, f"{what} the console of {domain}. Press Ctrl-] to detach.{hint}\r\n")
                if saved_attrs is not None:
                    tty.setraw(stdin_fd, termios.TCSANOW)  # keep what the tenant typed ahead
                keys = _Keys(escapes.EscapeReader(escape, writer=mode == "write"), request)
                code, note = _proxy(link, env, stdin_fd, keys, str(domain), resized)
            except KeyboardInterrupt:
                code, note = ExitCode.INTERRUPTED, "interrupted"
                if link is not None:
                    hangup = _detach(link)
                    note = "interrupted; detached"
            except Hangup as signalled:
                code, note, hangup = ExitCode.OK, "", signalled.signum
                if link is not None:
                    _detach(link)
            except TenantGone:
                code, note = ExitCode.OK, ""
                if link is not None:
                    hangup = _detach(link)
            except HelperClosed as closed:
                code, note = closed.code, closed.note
            except (OSError, protocol.ProtocolError, ValueError) as exc:
                code = ExitCode.UNAVAILABLE
                note = f"lost the connection to the vpsshell helper: {exc}"
    finally:
        if link is not None:
            link.sock.close()
        if saved_attrs is not None:
            import termios

            try:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_attrs)
            except (OSError, termios.error):
                pass  # the terminal is gone
        signal.signal(signal.SIGWINCH, previous_winch)
    if note and not (link is not None and link.tenant_gone):
        from vpsshell.shell.render import inert

        _tell(env, f"\r\n[vpsshell: {inert(note)}]\n")
    if hangup:
        take_course(hangup)
    return code


def _detach(link: _Link) -> int:
    """``link.detach()`` on the way out of a session that ends for another reason: a signal
    that arrives meanwhile cuts the wait short; returns it (0: none) for ``take_course``."""
    try:
        link.detach()
    except Hangup as signalled:
        return signalled.signum
    except KeyboardInterrupt:
        pass
    return 0


class _Keys:
    """The tenant's keystrokes through the escapes, and what the escapes do."""

    def __init__(self, reader: escapes.EscapeReader, request: Request | None) -> None:
        self.reader = reader
        self.request = request

    def handle(self, link: _Link, domain: str, data: bytes) -> bool:
        """Act on ``data``; True once it asks to detach."""
        for action in self.reader.feed(data):
            if isinstance(action, escapes.Send):
                link.send(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, action.data))
            elif isinstance(action, escapes.Detach):
                return True
            elif isinstance(action, escapes.Note):
                _note(link, action.text)
            elif isinstance(action, escapes.AskSysrq):
                link.show(b"\r\n[vpsshell: SysRq key? (0-9, a-z)] ")
            elif isinstance(action, escapes.AskReboot):
                link.show(f"\r\n[vpsshell: reboot {domain}? (y/n)] ".encode())
            elif isinstance(action, escapes.Sysrq):
                self._ask(
                    link,
                    "sysrq",
                    {"domain": domain, "key": action.key},
                    f"sent SysRq {action.key} to {domain}",
                )
            elif isinstance(action, escapes.Reboot):
                self._ask(link, "reboot", {"domain": domain}, f"rebooting {domain}")
        return False

    def _ask(self, link: _Link, op: str, args: dict[str, Any], done: str) -> None:
        """One request on a connection of its own; its outcome is one local line."""
        if self.request is None:
            _note(link, f"{op}: not available here; nothing sent")
            return
        try:
            self.request(op, args)
        except VpsError as exc:
            _note(link, f"{op} refused: {exc.message}")
            return
        _note(link, done)


def _note(link: _Link, text: str) -> None:
    from vpsshell.shell.render import inert

    lines = [inert(line) for line in text.split("\r\n")]
    link.show(("\r\n[vpsshell: " + "\r\n".join(lines) + "]\r\n").encode())


def _proxy(
    link: _Link, env: Environment, stdin_fd: int, keys: _Keys, domain: str, resized: _Flag
) -> tuple[ExitCode, str]:
    """The session loop; returns (exit code, note) for an end it decides itself, raises for the
    others (``HelperClosed``, ``TenantGone``, a signal)."""
    stdout_fd = link.stdout_fd
    on_terminal = env.stdin_isatty
    link.sock.setblocking(False)
    poller = select.poll()
    poller.register(link.sock, select.POLLIN)
    poller.register(stdin_fd, select.POLLIN)
    if stdout_fd != stdin_fd:
        poller.register(stdout_fd, 0)  # only POLLERR/POLLHUP: the tenant's end has gone
    size = _window_size(stdin_fd) if on_terminal else None
    if size:
        link.send(protocol.encode_message(protocol.resize(*size)))
    sent_size = size
    end_of_input: float | None = None
    while True:
        if on_terminal and resized.take():
            size = _window_size(stdin_fd)
            if size and size != sent_size:
                sent_size = size
                link.send(protocol.encode_message(protocol.resize(*size)))
        timeout = 1.0
        if end_of_input is not None:
            now = time.monotonic()
            quiet_until = max(link.last_output, end_of_input) + QUIET_SECONDS
            deadline = min(quiet_until, end_of_input + LINGER_SECONDS)
            if now >= deadline:
                link.detach()
                return ExitCode.OK, "end of input; detached"
            timeout = min(timeout, deadline - now)
        for fd, events in poller.poll(timeout * 1000):
            if fd == link.sock.fileno():
                link.receive()
            elif fd == stdin_fd:
                data = _read_input(stdin_fd)
                if data is None:
                    continue
                if not data:
                    poller.unregister(stdin_fd)
                    if on_terminal:  # a terminal gives no end of input: it hung up
                        raise TenantGone()
                    end_of_input = time.monotonic()
                    continue
                if keys.handle(link, domain, data):
                    link.detach()
                    return ExitCode.OK, "detached"
            elif fd == stdout_fd and events & GONE:
                link.tenant_gone = True
                raise TenantGone()
        link.check_helper_alive()


def _read_input(fd: int) -> bytes | None:
    """Up to 4096 bytes of input; empty at its end (also when it can no longer be read: a
    terminal that hung up gives EIO); None if there is nothing after all (a spurious wakeup)."""
    try:
        return os.read(fd, 4096)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _tell(env: Environment, text: str) -> None:
    """A line of our own on stderr; nobody left to read it is not an error."""
    try:
        env.stderr.write(text)
        env.stderr.flush()
    except (OSError, ValueError):
        pass
