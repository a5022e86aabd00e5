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
