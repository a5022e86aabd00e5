"""The tenant's end of ``events --follow``: print events as the helper sends them, until the end.

It ends when the tenant presses Ctrl-C (exit 0: stopping is what they asked for), when the
helper ends the session (its reason decides the exit code), when the connection is lost, or
when nobody is left to read the output: the reader of stdout closed it (an ``ssh host 'events
--follow'`` client that went away: sshd closes its end of the pipe), seen by ``poll`` at once
or as EPIPE on a write, and SIGHUP, SIGTERM or SIGQUIT (after which the signal takes its
course). Its input is never read, and its end does not end the follow: like ``tail -f``, it
may run with ``ssh -n`` or as a background job whose stdin is /dev/null. An end the tenant did
not ask for (the helper's reason, a lost connection) is raised as a ``VpsError``, for
``outcome.conclude`` to show and map like any other.

The helper pings (``{"event": "ping"}``) at the start and every ``seconds``; each ping is
answered at once with a ``pong``, or the helper drops this follower. Nothing at all from the
helper (no event, no ping) for ``seconds`` times ``misses`` (the ping says both) means it has
stopped answering: that ends the follow as ``Unavailable`` (exit 69). A helper that never
pings is never taken for gone: a quiet domain may have no event for days.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.errors import ExitCode, Unavailable
from vpsshell.shell import render
from vpsshell.shell.environment import Environment
from vpsshell.shell.outcome import session_end
from vpsshell.shell.signals import (
    GONE,
    Hangup,
    ending_signals,
    silence_stdout,
    take_course,
)


def run_follow(
    open_session: Callable[[], tuple[Any, socket.socket]], env: Environment, as_json: bool
) -> ExitCode:
    sock: socket.socket | None = None
    hangup = 0
    code = ExitCode.OK
    try:
        with ending_signals():
            try:
                result, sock = open_session()
                render.show_events(result, env, as_json=as_json)
                env.stdout.flush()
                code = _stream(sock, env, as_json)
            except KeyboardInterrupt:
                code = ExitCode.OK
            except Hangup as signalled:
                code, hangup = ExitCode.OK, signalled.signum
            except BrokenPipeError:  # whoever read our output has gone
                silence_stdout()
                code = ExitCode.OK
    finally:
        if sock is not None:
            sock.close()
    if hangup:
        take_course(hangup)
    return code


class _Silence:
    """How long the helper has been silent, against the bound its last ping gave."""

    def __init__(self) -> None:
        self.last_heard = time.monotonic()
        self.bound: float | None = None  # None: never pinged, never taken for gone

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def wait_ms(self) -> int | None:
        """How long ``poll`` may wait for the helper: None, for ever (never pinged); 0 once the
        bound is over (what is already there is still read before ``check``)."""
        if self.bound is None:
            return None
        left = self.last_heard + self.bound - time.monotonic()
        return max(0, int(left * 1000) + 1)

    def check(self) -> None:
        """Raises ``Unavailable`` once the helper has been silent for the whole bound."""
        bound = self.bound
        if bound is not None and time.monotonic() - self.last_heard >= bound:
            raise Unavailable(
                f"the vpsshell helper stopped answering (nothing from it for {bound:g} s)"
            )


def _answer_ping(sock: socket.socket) -> None:
    """A pong, at once. A helper that already closed its side is no error here: the reason it
    closed, or the end of the connection, is still to be read."""
    try:
        sock.sendall(protocol.encode_message(protocol.pong()))
    except (BrokenPipeError, ConnectionResetError):
        pass


def _stream(sock: socket.socket, env: Environment, as_json: bool) -> ExitCode:
    reader = protocol.FrameReader()
    silence = _Silence()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    try:
        stdout_fd: int | None = env.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        stdout_fd = None  # not a real stream (tests): its end is seen as EPIPE, if at all
    if stdout_fd is not None:
        poller.register(stdout_fd, 0)  # only POLLERR/POLLHUP: the reader has gone
    sock.settimeout(None)
    while True:
        events = dict(poller.poll(silence.wait_ms()))
        if stdout_fd is not None and events.get(stdout_fd, 0) & GONE:
            silence_stdout()
            return ExitCode.OK
        if sock.fileno() not in events:
            silence.check()
            continue
        try:
            chunk = sock.recv(65536)
            frames = reader.feed(chunk)
        except (OSError, protocol.ProtocolError) as exc:
            raise Unavailable(f"lost the connection to the vpsshell helper: {exc}") from None
        if not chunk:
            raise Unavailable("the vpsshell helper closed the connection")
        silence.heard()
        for frame_type, payload in frames:
            if frame_type != protocol.FRAME_MESSAGE:
                continue
            try:
                message = protocol.decode_message(payload)
            except protocol.ProtocolError:
                continue
            event = protocol.session_event(message)
            if event == protocol.EVENT_RECORD:
                render.show_event(message.get("record"), env, as_json=as_json)
            elif event == protocol.EVENT_PING:
                silence.bound = protocol.silence_bound(message)
                _answer_ping(sock)
            elif event == protocol.EVENT_CLOSED:
                ended = session_end(str(message.get("reason", "")), str(message.get("text") or ""))
                if ended is not None:
                    raise ended
                return ExitCode.OK
        env.stdout.flush()
