"""One-shot mode: ``vpsshell -c 'COMMAND'``, one line in, one exit code out."""

from __future__ import annotations

from vpsshell import paths
from vpsshell.errors import ExitCode
from vpsshell.shell.environment import Environment
from vpsshell.shell.session import Session, execute_line


def run_oneshot(line: str, env: Environment) -> ExitCode:
    session = Session(paths.client_socket_path(), env, interactive=False)
    try:
        code, _ = execute_line(line, session)
    finally:
        session.close()
    env.stdout.flush()
    return code
