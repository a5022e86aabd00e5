"""Interactive mode: a prompt loop over the same registry as ``-c``.

On a terminal it uses prompt_toolkit; on a pipe or a dumb terminal it reads lines from stdin
without any line editor. Either way each line goes through ``execute_line`` and its validation.
"""

from __future__ import annotations

import os

from vpsshell import paths
from vpsshell.errors import ExitCode
from vpsshell.shell.environment import Environment
from vpsshell.shell.session import Session, execute_line

MAX_INPUT_LINE = 4096


def _prompt_text(session: Session) -> str:
    return f"vpsshell [{session.current_domain}]> " if session.current_domain else "vpsshell> "


def _read_lines_plain(session: Session) -> ExitCode:
    env = session.env
    code = ExitCode.OK
    while True:
        line = env.stdin.readline(MAX_INPUT_LINE + 1)
        if not line:
            return code
        code, leave = execute_line(line.rstrip("\n"), session)
        env.stdout.flush()
        if leave:
            return ExitCode.OK


def _read_lines_prompt(session: Session) -> ExitCode:
    from prompt_toolkit import PromptSession

    prompt: PromptSession[str] = PromptSession(
        enable_open_in_editor=False, enable_system_prompt=False, enable_suspend=False
    )
    code = ExitCode.OK
    while True:
        try:
            line = prompt.prompt(_prompt_text(session))
        except KeyboardInterrupt:
            continue
        except EOFError:
            return code
        code, leave = execute_line(line, session)
        if leave:
            return ExitCode.OK


def run_interactive(env: Environment) -> ExitCode:
    session = Session(paths.client_socket_path(), env, interactive=True)
    dumb = os.environ.get("TERM", "dumb") in ("dumb", "")
    try:
        if env.stdin_isatty and env.stdout_isatty and not dumb:
            return _read_lines_prompt(session)
        return _read_lines_plain(session)
    finally:
        session.close()
