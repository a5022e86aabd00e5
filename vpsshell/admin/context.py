"""What every ``vpsshell-admin`` command runs with: streams, environment, clock and the config.

Commands get an ``AdminContext`` instead of reaching for ``sys.stdout``, ``os.environ`` or the
wall clock, so tests can drive them with pipes and a fixed date. A command reports a one-line
failure by raising ``AdminError``; ``main()`` is the one place that prints it and picks the exit
status. Nothing here looks at the policy itself.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from vpsshell.daemon.config import DaemonConfig


class AdminExit(IntEnum):
    """Exit statuses of ``vpsshell-admin`` (documented in vpsshell-admin(8))."""

    OK = 0
    FAILED = 1  # a check failed, access denied, nothing installed
    USAGE = 2  # bad arguments (argparse uses 2 as well)
    UNAVAILABLE = 69  # the helper is not running (only for commands that need it)
    BUSY = 75  # another vpsshell-admin holds the policy lock


class AdminError(Exception):
    """A failure shown as one line (``vpsshell-admin: MESSAGE``), never as a traceback."""

    def __init__(self, message: str, exit_code: int = AdminExit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class AdminContext:
    """Streams, environment, clock and helper config of one ``vpsshell-admin`` run."""

    config: DaemonConfig
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    now: _dt.datetime | None = None

    @property
    def trusted_uids(self) -> frozenset[int]:
        """Owners a policy file may have: root, and the admin's own uid (unprivileged demos)."""
        return frozenset({0, os.geteuid()})

    def clock(self) -> _dt.datetime:
        return self.now if self.now is not None else _dt.datetime.now()

    def today(self) -> _dt.date:
        return self.clock().date()

    def out(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A remark that is not the command's output (goes to stderr)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def ask(self, prompt: str, choices: str, on_eof: str) -> str:
        """Ask until the answer's first letter is one of ``choices``; end of input is ``on_eof``."""
        while True:
            self.stdout.write(prompt)
            self.stdout.flush()
            answer = self.stdin.readline()
            if not answer:
                self.out()
                return on_eof
            if not self.stdin.isatty():  # keep a transcript readable when answers are piped
                self.out(answer.rstrip("\n"))
            letter = answer.strip()[:1].lower()
            if letter and letter in choices:
                return letter
