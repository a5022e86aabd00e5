"""Writes the ``vpsshell`` login-shell launcher: a script whose interpreter runs isolated.

pip's console-script wrapper starts Python normally, so ``PYTHONPATH``, ``PYTHONHOME``,
``PYTHONSTARTUP``/``PYTHONINSPECT`` and friends could change what runs before vpsshell gets
control. The launcher's ``#!`` line passes ``-I`` to the interpreter itself (as ``python -I``):
no PYTHON* variable, no user site-packages, no script directory on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import tempfile

#: The comment that marks a launcher as ours (``uninstall`` removes only such a file).
LAUNCHER_MARK = "# vpsshell login shell, written by `vpsshell-admin install-shell`."
LAUNCHER = (
    "#!{python} -I\n"
    + LAUNCHER_MARK
    + """
# Runs Python isolated (-I): the environment cannot change what is imported.
import sys

from vpsshell.shell.launch import main

sys.exit(main())
"""
)


def launcher_text(python: str | None = None) -> str:
    return LAUNCHER.format(python=python or sys.executable)


def install_launcher(path: str, python: str | None = None) -> None:
    """Atomically write the launcher to ``path`` with mode 0755."""
    text = launcher_text(python)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".vpsshell-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o755)  # noqa: S103 - a login shell every tenant runs
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
