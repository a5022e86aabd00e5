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
"""

from __future__ import annotations

import select
import socket
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


def _stream(sock: socket.socket, env: Environment, as_json: bool) -> ExitCode:
    reader = protocol.FrameReader()
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
        events = dict(poller.poll())
        if stdout_fd is not None and events.get(stdout_fd, 0) & GONE:
            silence_stdout()
            return ExitCode.OK
        if sock.fileno() not in events:
            continue
        try:
            chunk = sock.recv(65536)
            frames = reader.feed(chunk)
        except (OSError, protocol.ProtocolError) as exc:
            raise Unavailable(f"lost the connection to the vpsshell helper: {exc}") from None
        if not chunk:
            raise Unavailable("the vpsshell helper closed the connection")
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
            elif event == protocol.EVENT_CLOSED:
                ended = session_end(str(message.get("reason", "")), str(message.get("text") or ""))
                if ended is not None:
                    raise ended
                return ExitCode.OK
        env.stdout.flush()
