"""The tenant's end of ``events --follow``: print events as the helper sends them, until the end.

It ends when the tenant presses Ctrl-C (exit 0: stopping is what they asked for), when the
helper ends the session (its reason decides the exit code), when the connection is lost, or
when nobody is left to read the output (SIGHUP, SIGTERM, or the other end of stdout gone, as
when an ``ssh host 'events --follow'`` client disconnects). Nothing here becomes a traceback.
"""

from __future__ import annotations

import json
import select
import signal
import socket
from collections.abc import Callable
from typing import Any

from vpsshell import protocol
from vpsshell.errors import ExitCode
from vpsshell.shell import render
from vpsshell.shell.console import CLOSE_EXIT_CODES, Hangup, raise_hangup
from vpsshell.shell.environment import Environment


def _stdout_gone(env: Environment) -> bool:
    """The reading end of stdout is closed (a pipe's reader or a socket's peer went away)."""
    try:
        fd = env.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # only POLLERR / POLLHUP, always reported
    return any(revents & (select.POLLERR | select.POLLHUP) for _, revents in poller.poll(0))


def run_follow(
    open_session: Callable[[], tuple[Any, socket.socket]], env: Environment, as_json: bool
) -> ExitCode:
    previous = {
        signum: signal.signal(signum, raise_hangup) for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    sock: socket.socket | None = None
    try:
        result, sock = open_session()
        render.show_events(result, env, as_json=as_json)
        env.stdout.flush()
        return _stream(sock, env, as_json)
    except (KeyboardInterrupt, Hangup):
        return ExitCode.OK
    except BrokenPipeError:  # whoever read our output has gone
        return ExitCode.OK
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if sock is not None:
            sock.close()


def _stream(sock: socket.socket, env: Environment, as_json: bool) -> ExitCode:
    reader = protocol.FrameReader()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    sock.settimeout(None)
    while True:
        if not poller.poll(1000):
            if _stdout_gone(env):
                return ExitCode.OK
            continue
        try:
            chunk = sock.recv(65536)
            frames = reader.feed(chunk)
        except (OSError, protocol.ProtocolError) as exc:
            render.show_error(f"lost the connection to the vpsshell helper: {exc}", env)
            return ExitCode.UNAVAILABLE
        if not chunk:
            render.show_error("the vpsshell helper closed the connection", env)
            return ExitCode.UNAVAILABLE
        for frame_type, payload in frames:
            if frame_type != protocol.FRAME_MESSAGE:
                continue
            try:
                message = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("event") == "record":
                render.show_event(message.get("record"), env, as_json=as_json)
            elif message.get("event") == "closed":
                reason = str(message.get("reason", ""))
                if reason != "detached":
                    render.show_error(str(message.get("text") or reason), env)
                return CLOSE_EXIT_CODES.get(reason, ExitCode.FAILED)
        env.stdout.flush()
