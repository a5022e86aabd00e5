"""Entry point of the ``vpsshell`` program: argv policy, then one-shot or interactive mode.

Accepted invocations are exactly: no arguments (interactive; also as a login shell, when argv[0]
starts with ``-``) and ``-c COMMAND`` (what sshd runs for ``ssh host COMMAND``). Anything else
is refused with exit 64. This module imports almost nothing at load time: ``vpsshell -c`` is a
new process per SSH command. Each mode starts by setting its own signal dispositions, whatever
it inherited (``signals.own_dispositions``); whatever escapes a command goes to
``outcome.conclude``, the one place that decides exit codes and what the tenant is told.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: vpsshell [-c COMMAND]"


def _isolate() -> None:
    """Re-execute under ``python -I`` if started without it and the environment could matter.

    The login-shell launcher (``vpsshell-admin install-shell``) already starts isolated; this
    covers the plain console-script wrapper. The interpreter has already started by now, so
    this is defence in depth, not the boundary: see README, "The login shell".
    """
    if sys.flags.isolated:
        return
    if not any(key.startswith("PYTHON") for key in os.environ):
        return
    argv = [sys.executable, "-I", "-m", "vpsshell.shell.launch", *sys.argv[1:]]
    os.execv(sys.executable, argv)  # noqa: S606 - the interpreter itself, fixed argv


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _isolate()
        argv = sys.argv[1:]
    from vpsshell.shell.environment import Environment

    env = Environment.from_process()
    if not argv:
        from vpsshell.shell.interactive import run_interactive

        return int(run_interactive(env))
    if len(argv) == 2 and argv[0] == "-c":
        from vpsshell.shell.oneshot import run_oneshot

        return int(run_oneshot(argv[1], env))
    from vpsshell.errors import UsageError
    from vpsshell.shell.outcome import conclude

    return int(conclude(UsageError(USAGE), env).code)


if __name__ == "__main__":
    sys.exit(main())
