"""One tenant session: the helper connection, the current domain, and running one line.

``execute_line`` runs a line the same way for both modes and catches nothing: an error, Ctrl-C
or a bug escapes it to the mode, which hands it to ``outcome.conclude``, the one place that
decides exit codes and what the tenant is told.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

from vpsshell.errors import ConfirmRequired, ExitCode
from vpsshell.shell import render
from vpsshell.shell.commands import HANDLERS, VERBS
from vpsshell.shell.environment import Environment
from vpsshell.shell.grammar import parse

T = TypeVar("T")


class Session:
    """The ``Context`` handlers see: a lazily connected client plus per-session state."""

    def __init__(self, socket_path: str, env: Environment, *, interactive: bool) -> None:
        from vpsshell.client import HelperClient

        self.env = env
        self.interactive = interactive
        self.current_domain: str | None = None
        self.client = HelperClient(socket_path)

    def call(self, op: str, args: dict[str, Any], *, timeout: float = 90.0) -> Any:
        def progress(text: str) -> None:
            render.show_progress(text, self.env)

        return self._confirming(
            lambda a: self.client.call(op, a, timeout=timeout, on_progress=progress), args
        )

    def _confirming(self, send: Callable[[dict[str, Any]], T], args: dict[str, Any]) -> T:
        """``send(args)``; when the policy says confirm=password (or confirm=totp), ask (no
        echo) and send again with the password (or code). The helper counts failures and locks
        out."""
        try:
            return send(args)
        except ConfirmRequired as exc:
            if not self.env.stdin_isatty:
                raise ConfirmRequired(f"{exc.message} (run it on a terminal: ssh -t)") from None
            import getpass

            while True:
                try:
                    # confirm=totp asks for a code, sent in the same field as a password
                    label = "Code" if "code" in exc.message else "Password"
                    password = getpass.getpass(f"{exc.message}. {label}: ")
                except (EOFError, KeyboardInterrupt):
                    raise ConfirmRequired("cancelled") from None
                try:
                    return send({**args, "password": password})
                except ConfirmRequired as again:
                    exc = again

    def attach_console(self, op: str, args: dict[str, Any], mode: str, escape: int) -> ExitCode:
        """Turn this terminal into the domain's console until detach; returns the exit code.
        Its escapes' requests (SysRq, reboot) go on connections of their own."""
        from vpsshell.shell.console import run_console

        if self.env.stdin_isatty:  # the window's size, for the session's recording
            with contextlib.suppress(OSError):
                cols, rows = os.get_terminal_size(self.env.stdin.fileno())
                if rows and cols:  # a pty nobody sized says 0x0
                    args = {**args, "rows": rows, "cols": cols}
        return run_console(
            lambda: self._confirming(lambda a: self.client.open_console(op, a), args),
            self.env,
            mode,
            escape=escape,
            request=lambda request_op, request_args: self.client.call(request_op, request_args),
        )

    def follow_events(self, args: dict[str, Any], *, as_json: bool) -> ExitCode:
        """Show the events the helper sends until Ctrl-C or the end; returns the exit code."""
        from vpsshell.shell.follow import run_follow

        return run_follow(
            lambda: self._confirming(lambda a: self.client.open_console("events", a), args),
            self.env,
            as_json,
        )

    def download(self, op: str, args: dict[str, Any]) -> ExitCode:
        """Copy what the helper sends after the reply (a recording) to stdout, unchanged;
        returns the exit code."""
        from vpsshell.shell.download import receive

        result, sock = self._confirming(lambda a: self.client.open_console(op, a), args)
        return receive(sock, result, self.env)

    def close(self) -> None:
        self.client.close()


def execute_line(line: str, session: Session) -> tuple[ExitCode, bool]:
    """Run one command line and show its output. Returns the exit code of a command that
    completed (0, or how a console or follow session ended) and whether the session should
    end; raises for every other outcome (``outcome.conclude`` maps it)."""
    verbs = VERBS
    if not session.interactive:
        verbs = {word: verb for word, verb in VERBS.items() if not verb.interactive_only}
    parsed = parse(line, verbs, session.current_domain if session.interactive else None)
    if parsed is None:
        return ExitCode.OK, False
    output = HANDLERS[parsed.verb.name](session, parsed)
    if output.kind == "ended":  # the handler ran interactively (a console) and says how
        return ExitCode(output.data), False
    render.show(output, session.env, as_json=bool(parsed.options.get("json")))
    return ExitCode.OK, output.kind == "exit"
