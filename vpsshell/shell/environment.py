"""The shell's view of its terminal: streams, whether they are TTYs, and colour preference.

Injectable so tests can simulate a terminal or a pipe without touching the real streams.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple, TextIO


class Environment(NamedTuple):
    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    stdin_isatty: bool
    stdout_isatty: bool
    stderr_isatty: bool
    colour: bool
    dumb_terminal: bool = False  # TERM is unset, empty or "dumb": no line editor, no spinner

    @classmethod
    def from_process(cls) -> Environment:
        """The process's streams; one whose descriptor was closed at start (``vpsshell -c
        list <&-``: Python then has None for it) is /dev/null instead, here and in ``sys``."""
        if sys.stdin is None:
            sys.stdin = _null(writing=False)
        if sys.stdout is None:
            sys.stdout = _null(writing=True)
        if sys.stderr is None:
            sys.stderr = _null(writing=True)
        stdout_isatty = sys.stdout.isatty()
        no_color = "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != ""
        dumb = os.environ.get("TERM", "dumb") in ("dumb", "")
        return cls(
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
            stdin_isatty=sys.stdin.isatty(),
            stdout_isatty=stdout_isatty,
            stderr_isatty=sys.stderr.isatty(),
            colour=stdout_isatty and not no_color and not dumb,
            dumb_terminal=dumb,
        )


def _null(*, writing: bool) -> TextIO:
    # opened in the order 0, 1, 2, each takes the lowest free descriptor: the one that was closed
    if writing:
        return open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process's life
    return open(os.devnull, encoding="utf-8")  # noqa: SIM115
