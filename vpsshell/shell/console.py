"""The tenant's end of a console session: raw terminal <-> helper, until Ctrl-] or the end.

The terminal is put in raw mode and restored on every way out (detach, helper gone, console
closed by the helper, SIGTERM/SIGHUP). Bytes pass raw in both directions: no terminal
emulation here either. Keystrokes of a watcher are not sent, except that Ctrl-] detaches.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
from types import FrameType
from typing import Any

from vpsshell import protocol
from vpsshell.errors import ExitCode
from vpsshell.shell.environment import Environment

DETACH_KEY = b"\x1d"  # Ctrl-]
# why the helper closed a console (or an ``events --follow``) session -> the exit code
CLOSE_EXIT_CODES = {
    "detached": ExitCode.OK,
    "takeover": ExitCode.TEMPORARY,
    "too-slow": ExitCode.TEMPORARY,
    "revoked": ExitCode.DENIED,
    "kicked": ExitCode.DENIED,
    "helper-stopping": ExitCode.UNAVAILABLE,
    "time-limit": ExitCode.TEMPORARY,
}


class Hangup(Exception):
    """SIGTERM or SIGHUP while a session runs: end it cleanly."""

    pass


def raise_hangup(signum: int, frame: FrameType | None) -> None:
    raise Hangup()


def _window_size(fd: int) -> tuple[int, int] | None:
    try:
        import fcntl
        import termios

        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        return rows, cols
    except OSError:
        return None


def _message(data: dict[str, Any]) -> bytes:
    return protocol.encode_message(data)


def run_console(sock: socket.socket, env: Environment, domain: str, mode: str) -> ExitCode:
    """Proxy the console until it ends; returns the exit code for how it ended."""
    stdin_fd = env.stdin.fileno()
    stdout_fd = env.stdout.fileno()
    saved_attrs = None
    if env.stdin_isatty:
        import termios
        import tty

        saved_attrs = termios.tcgetattr(stdin_fd)
    what = "Watching" if mode == "watch" else "Connected to"
    env.stderr.write(f"{what} the console of {domain}. Press Ctrl-] to detach.\r\n")
    env.stderr.flush()
    previous = {
        signum: signal.signal(signum, raise_hangup) for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    selector = selectors.DefaultSelector()
    reader = protocol.FrameReader()
    code = ExitCode.UNAVAILABLE
    note = "the vpsshell helper closed the console"
    resize_pending = False

    def on_winch(signum: int, frame: FrameType | None) -> None:
        nonlocal resize_pending
        resize_pending = True

    def send(frame: bytes) -> None:
        """Blocking send; a helper that already closed its side is not an error here: its
        last frames (the reason it closed) are still to be read."""
        sock.setblocking(True)
        try:
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            sock.setblocking(False)

    previous[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
    try:
        if saved_attrs is not None:
            tty.setraw(stdin_fd, termios.TCSANOW)  # keep what the tenant typed ahead
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, "sock")
        selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
        size = _window_size(stdin_fd) if saved_attrs is not None else None
        if size:
            send(_message({"v": 1, "op": "resize", "rows": size[0], "cols": size[1]}))
        while True:
            if resize_pending:
                resize_pending = False
                size = _window_size(stdin_fd)
                if size:
                    send(_message({"v": 1, "op": "resize", "rows": size[0], "cols": size[1]}))
            try:
                events = selector.select(timeout=1.0)
            except InterruptedError:
                continue
            for key, _ in events:
                if key.data == "stdin":
                    data = os.read(stdin_fd, 4096)
                    if not data:  # stdin closed: nothing more to type; stay and watch
                        selector.unregister(stdin_fd)
                        continue
                    if DETACH_KEY in data:
                        before = data.split(DETACH_KEY, 1)[0]
                        if before and mode == "write":
                            send(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, before))
                        send(_message({"v": 1, "op": "detach"}))
                        code, note = ExitCode.OK, "detached"
                        return code
                    if mode == "write":
                        send(protocol.encode_frame(protocol.FRAME_CONSOLE_DATA, data))
                else:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        return code
                    for frame_type, payload in reader.feed(chunk):
                        if frame_type == protocol.FRAME_CONSOLE_DATA:
                            _write_all(stdout_fd, payload)
                            continue
                        message = json.loads(payload)
                        text = str(message.get("text", ""))
                        if message.get("event") == "closed":
                            reason = str(message.get("reason", ""))
                            code = CLOSE_EXIT_CODES.get(reason, ExitCode.FAILED)
                            note = text
                            return code
                        _notice(stdout_fd, text)
    except Hangup:
        code, note = ExitCode.OK, ""
        return code
    except (OSError, protocol.ProtocolError, ValueError) as exc:
        note = f"lost the connection to the vpsshell helper: {exc}"
        return ExitCode.UNAVAILABLE
    finally:
        selector.close()
        sock.close()
        if saved_attrs is not None:
            import termios

            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_attrs)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if note:
            from vpsshell.shell.render import inert

            env.stderr.write(f"\r\n[vpsshell: {inert(note)}]\n")
            env.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _notice(fd: int, text: str) -> None:
    from vpsshell.shell.render import inert

    _write_all(fd, f"\r\n[vpsshell: {inert(text)}]\r\n".encode())
