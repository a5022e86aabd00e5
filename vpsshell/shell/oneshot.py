"""One-shot mode: ``vpsshell -c 'COMMAND'``, one line in, one exit code out.

A line outside the grammar is refused with 64 and, best effort, reported to the helper so it
lands in the audit log (sshd runs ``scp -t``, ``sftp-server``, ``rsync --server`` or
``~/.ssh/rc`` through the login shell this way; an admin wants to see those attempts).
"""

from __future__ import annotations

from vpsshell import paths
from vpsshell.errors import ExitCode, VpsError
from vpsshell.shell.environment import Environment
from vpsshell.shell.session import Session, execute_line


def run_oneshot(line: str, env: Environment) -> ExitCode:
    session = Session(paths.client_socket_path(), env, interactive=False)
    try:
        try:
            code, _ = execute_line(line, session)
        except KeyboardInterrupt:
            # Ctrl-C under `ssh -t`: no traceback; the helper sees the client leave, and an
            # action it already started goes on (a --wait stops waiting, nothing more)
            env.stderr.write("vpsshell: interrupted\n")
            return ExitCode.INTERRUPTED
        if code == ExitCode.USAGE:
            try:
                session.client.call("refused", {"line": line[:1024]}, timeout=5.0)
            except VpsError:
                pass  # the refusal stands whether or not the helper heard of it
    finally:
        session.close()
    env.stdout.flush()
    return code
