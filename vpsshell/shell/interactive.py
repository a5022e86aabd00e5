"""Interactive mode: a prompt loop over the same registry as ``-c``; safe as a login shell.

On a capable terminal the prompt is prompt_toolkit's, assembled from small factories: the
completer (``completer``), the prompt and toolbar (``toolbar``), the key bindings (``keys``),
the history (``history``) and the background refresh of the caller's domains (``watch``).
On a pipe or a dumb terminal lines are read from stdin with no line editor. Either way every
line goes to ``session.execute_line`` and through the grammar's validation, exactly like
``vpsshell -c``; nothing here interprets a line itself.

Signals (``signals.own_dispositions``, whatever was inherited): SIGTSTP is ignored (there is no
job control to return to), and so is SIGQUIT. SIGINT is ignored except while a command runs,
when it stops the wait for the helper; at the prompt Ctrl-C is a key that clears the line.
SIGHUP and SIGTERM end the shell. The editor, the system prompt and suspend are off.

A line's status and the one line the tenant is told are ``outcome.conclude``'s, as for ``-c``
(Ctrl-C during a command is 130 here too); the shell's exit status at the end of its input is
the last line's status. A fault of the shell itself, also outside a command, is one line.
"""

from __future__ import annotations

import os
import pwd
import signal
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from vpsshell import paths
from vpsshell.errors import ExitCode
from vpsshell.shell import render
from vpsshell.shell.environment import Environment
from vpsshell.shell.outcome import CAUGHT, conclude
from vpsshell.shell.session import Session, execute_line
from vpsshell.shell.settings import ShellSettings, load_settings
from vpsshell.shell.signals import own_dispositions

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

    from vpsshell.shell.watch import DomainWatch

MAX_INPUT_LINE = 4096


class InteractiveSession(Session):
    """A session whose helper requests show that they are under way (``render.Progress``)."""

    def __init__(self, socket_path: str, env: Environment) -> None:
        from vpsshell.client import HelperClient

        super().__init__(socket_path, env, interactive=True)
        spinner = env.stderr_isatty and not env.dumb_terminal

        class ShowingClient(HelperClient):
            # per request, not per command: a password prompt between two requests of one
            # command (confirm=password) is never drawn over
            def call(
                self,
                op: str,
                args: dict[str, Any] | None = None,
                *,
                timeout: float = 90.0,
                on_progress: Callable[[str], None] | None = None,
            ) -> Any:
                domain = (args or {}).get("domain")
                label = f"{op} {domain} ..." if domain else f"{op} ..."
                with render.Progress(env, label, spinner=spinner) as progress:
                    return super().call(op, args, timeout=timeout, on_progress=progress.update)

        self.client = ShowingClient(socket_path)


def run_line(session: Session, line: str) -> tuple[ExitCode, bool]:
    """``execute_line`` with Ctrl-C armed: it stops the wait, never the shell. Returns the
    line's status (``outcome.conclude`` decides it and the line shown, as for ``-c``) and
    whether the shell ends."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            code, leave = execute_line(line, session)
            session.env.stdout.flush()  # a reader that has gone is this line's outcome
            return code, leave
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except CAUGHT as exc:  # a login shell reports it and keeps going
        outcome = conclude(exc, session.env)
        return outcome.code, outcome.ends_session
    finally:
        # one connection per command: nothing is held open (or goes stale) at an idle prompt,
        # and an interrupted request's late reply can never be read as the next one's
        session.close()


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _greet(session: Session, settings: ShellSettings, warnings: list[str]) -> Any:
    """Banner, config warnings and the one-line summary of the caller's domains."""
    env = session.env
    for warning in warnings:
        render.show_error(warning, env)
    if settings.banner:
        render.show_banner(settings.banner, env)
    if not settings.motd:
        return None
    try:
        domains = session.client.call("list", {}, timeout=10.0)
        if isinstance(domains, list):
            render.show_motd([d for d in domains if isinstance(d, dict)], env)
        env.stdout.flush()
    except CAUGHT as exc:  # one line, as for a command; the login goes on
        conclude(exc, env)
        return None
    finally:
        session.close()
    return domains


# -- pipe or dumb terminal --------------------------------------------------------------------


def _read_line(stream: IO[Any]) -> str | None:
    """One line without its newline; None at end of input. An over-long line is returned
    clipped (and is then refused as too long) and the rest of it is discarded, so its tail
    can never be read as a command of its own."""
    raw = stream.readline(MAX_INPUT_LINE + 1)
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if not text.endswith("\n") and len(raw) > MAX_INPUT_LINE:
        while True:
            rest = stream.readline(MAX_INPUT_LINE)
            if not rest or rest.endswith(b"\n" if isinstance(rest, bytes) else "\n"):
                break
    return text.removesuffix("\n")


def _run_plain(session: Session, settings: ShellSettings, warnings: list[str]) -> ExitCode:
    env = session.env
    on_terminal = env.stdin_isatty  # a dumb terminal gets a prompt and a greeting; a pipe not
    stream: IO[Any] = getattr(env.stdin, "buffer", env.stdin)
    if on_terminal:
        _greet(session, settings, warnings)
    else:
        for warning in warnings:
            render.show_error(warning, env)
    code = ExitCode.OK
    while True:
        if on_terminal:
            domain = f":{render.inert(session.current_domain)}" if session.current_domain else ""
            env.stdout.write(f"{_user_name()}@vpsshell{domain}> ")
            env.stdout.flush()
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                line = _read_line(stream)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        except KeyboardInterrupt:
            env.stdout.write("\n")
            continue
        if line is None:
            if on_terminal:
                env.stdout.write("\n")
            return code
        code, leave = run_line(session, line)
        if leave:
            return ExitCode.OK


# -- prompt_toolkit ---------------------------------------------------------------------------


def build_prompt_session(
    session: Session,
    watch: DomainWatch,
    settings: ShellSettings,
    on_refused: Callable[[str], None],
    **io: Any,
) -> PromptSession[str]:
    """The line editor, from its factories; ``io`` may pass ``input``/``output`` (tests)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.shortcuts import CompleteStyle
    from prompt_toolkit.styles import Style

    from vpsshell.shell.commands import VERBS
    from vpsshell.shell.completer import ShellCompleter
    from vpsshell.shell.history import build_history
    from vpsshell.shell.keys import build_key_bindings
    from vpsshell.shell.toolbar import STYLE, bottom_toolbar, prompt_message

    user = _user_name()
    prompt: PromptSession[str] = PromptSession(
        message=lambda: prompt_message(user, session.current_domain),
        bottom_toolbar=lambda: bottom_toolbar(watch.snapshot, session.current_domain),
        completer=ShellCompleter(VERBS, watch.names),
        complete_while_typing=False,
        complete_style=CompleteStyle.MULTI_COLUMN,
        key_bindings=build_key_bindings(on_refused),
        history=build_history(settings.history, settings.history_size),
        style=Style.from_dict(STYLE),
        enable_open_in_editor=False,
        enable_system_prompt=False,
        enable_suspend=False,
        enable_history_search=False,
        mouse_support=False,
        **io,
    )
    # a terminal that does not answer cursor position requests gets no warning about it:
    # the toolbar is then simply not drawn
    prompt.app.renderer.cpr_not_supported_callback = None
    return prompt


async def _run_prompt(session: Session, settings: ShellSettings, warnings: list[str]) -> ExitCode:
    import asyncio

    from prompt_toolkit.application import run_in_terminal
    from prompt_toolkit.patch_stdout import patch_stdout

    from vpsshell.shell.watch import DomainWatch

    env = session.env
    watch = DomainWatch(session.client.path, settings.refresh_seconds)  # its own connections
    watch.seed(_greet(session, settings, warnings))

    def refused(message: str) -> None:
        run_in_terminal(lambda: render.show_error(message, env))

    prompt = build_prompt_session(session, watch, settings, refused)
    refresher = asyncio.create_task(watch.run(prompt.app.invalidate))
    code = ExitCode.OK
    try:
        with patch_stdout():
            while True:
                try:
                    line = await prompt.prompt_async(handle_sigint=False)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return code
                code, leave = run_line(session, line)
                if leave:
                    return ExitCode.OK
                watch.poke()
    finally:
        refresher.cancel()
        await asyncio.wait([refresher])  # it closes its connections as it unwinds
        watch.close()


def run_interactive(env: Environment) -> ExitCode:
    """The shell until ``exit``, the end of its input or a signal; returns its exit status:
    0 after ``exit``, else the status of its last command (like sh). Commands conclude in
    ``run_line``; what escapes here is a fault of the shell itself, also one line and 1."""
    own_dispositions(interactive=True)
    session = InteractiveSession(paths.client_socket_path(), env)
    try:
        settings, warnings = load_settings()
        if env.stdin_isatty and env.stdout_isatty and not env.dumb_terminal:
            import asyncio

            return asyncio.run(_run_prompt(session, settings, warnings))
        return _run_plain(session, settings, warnings)
    except CAUGHT as exc:
        return conclude(exc, env).code
    finally:
        session.close()
