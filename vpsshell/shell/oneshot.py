"""One-shot mode: ``vpsshell -c 'COMMAND'``, one line in, one exit code out.

A line outside the grammar is refused with 64 and, best effort, reported to the helper so it
lands in the audit log (sshd runs ``scp -t``, ``sftp-server``, ``rsync --server`` or
``~/.ssh/rc`` through the login shell this way; an admin wants to see those attempts).

Whatever happens, the tenant gets one line, never a traceback: Ctrl-C is "interrupted" (130),
output nobody reads any more (the ssh client went away) ends the command quietly, and a bug is
one "internal error" line (1).
"""

from __future__ import annotations

from vpsshell import paths
from vpsshell.errors import ExitCode, VpsError
from vpsshell.shell.environment import Environment
from vpsshell.shell.session import Session, execute_line


def _say(env: Environment, text: str) -> None:
    try:
        env.stderr.write(text)
        env.stderr.flush()
    except (OSError, ValueError):
        pass  # nobody is left to read it


def run_oneshot(line: str, env: Environment) -> ExitCode:
    from vpsshell.shell.signals import Hangup, own_dispositions, take_course

    own_dispositions(interactive=False)
    session = Session(paths.client_socket_path(), env, interactive=False)
    try:
        code, _ = execute_line(line, session)
        if code == ExitCode.USAGE:
            try:
                session.client.call("refused", {"line": line[:1024]}, timeout=5.0)
            except VpsError:
                pass  # the refusal stands whether or not the helper heard of it
        env.stdout.flush()
        return code
    except Hangup as signalled:  # a second signal while a console or a follow was ending
        take_course(signalled.signum)
        return ExitCode.OK
    except KeyboardInterrupt:
        # Ctrl-C under `ssh -t`: no traceback; the helper sees the client leave, and an
        # action it already started goes on (a --wait stops waiting, nothing more)
        _say(env, "vpsshell: interrupted\n")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # whoever read our output has gone (the ssh client went away)
        from vpsshell.shell.signals import silence_stdout

        silence_stdout()
        return ExitCode.FAILED
    except Exception as exc:  # a bug: one line, never a traceback
        from vpsshell.shell.render import inert

        _say(env, f"vpsshell: internal error: {type(exc).__name__}: {inert(exc)}\n")
        return ExitCode.FAILED
    finally:
        session.close()
