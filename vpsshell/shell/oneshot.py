"""One-shot mode: ``vpsshell -c 'COMMAND'``, one line in, one exit code out.

A line outside the grammar is refused with 64 and, best effort, reported to the helper so it
lands in the audit log (sshd runs ``scp -t``, ``sftp-server``, ``rsync --server`` or
``~/.ssh/rc`` through the login shell this way; an admin wants to see those attempts).

Whatever happens, the exit code and the one line the tenant sees are decided by
``outcome.conclude``, as for the interactive shell; never a traceback.
"""

from __future__ import annotations

from vpsshell import paths
from vpsshell.errors import ExitCode
from vpsshell.shell.environment import Environment
from vpsshell.shell.session import Session, execute_line
from vpsshell.shell.signals import own_dispositions


def run_oneshot(line: str, env: Environment) -> ExitCode:
    own_dispositions(interactive=False)
    session = Session(paths.client_socket_path(), env, interactive=False)
    try:
        code, _ = execute_line(line, session)
        env.stdout.flush()  # here, not at exit: a reader that has gone is an outcome too
    except (Exception, KeyboardInterrupt) as exc:  # ``outcome.CAUGHT``
        from vpsshell.shell.outcome import conclude  # only now: most commands just succeed

        code = conclude(exc, env).code
        if code == ExitCode.USAGE:
            _report_refused(line, session)
    finally:
        session.close()
    return code


def _report_refused(line: str, session: Session) -> None:
    """Tell the helper, for its audit log, about a line refused as usage: best effort, quietly
    (the refusal stands whether or not the helper heard of it)."""
    try:
        session.client.call("refused", {"line": line[:1024]}, timeout=5.0)
    except (Exception, KeyboardInterrupt):  # noqa: S110 - the tenant has had its one line
        pass  # the helper unreachable, a second Ctrl-C, a fault: nothing more to say
