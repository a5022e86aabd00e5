"""One line of the interactive shell: Ctrl-C while waiting, a bug, and reading from a pipe."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from vpsshell.errors import Denied, ExitCode
from vpsshell.shell.environment import Environment
from vpsshell.shell.interactive import MAX_INPUT_LINE, _read_line, run_line
from vpsshell.shell.outcome import INTERRUPTED
from vpsshell.shell.session import Session


class FakeHelperSession(Session):
    """A session whose helper answers with ``answer`` (or raises it)."""

    def __init__(self, answer: Any) -> None:
        self.err = io.StringIO()
        env = Environment(io.StringIO(), io.StringIO(), self.err, False, False, False, False)
        super().__init__("/nonexistent.sock", env, interactive=True)
        self.answer = answer
        self.closed = 0

    def call(self, op: str, args: dict[str, Any], *, timeout: float = 90.0) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(autouse=True)
def sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_while_waiting_returns_to_the_prompt() -> None:
    """The same status and line as ``vpsshell -c`` (130), and the shell goes on."""
    session = FakeHelperSession(KeyboardInterrupt())
    assert run_line(session, "shutdown web1 --wait") == (ExitCode.INTERRUPTED, False)
    assert session.err.getvalue() == f"vpsshell: {INTERRUPTED}\n"
    assert session.closed == 1  # the connection with the unanswered request is gone
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # and Ctrl-C is disarmed again


def test_a_bug_is_one_line_not_a_traceback() -> None:
    session = FakeHelperSession("not a domain")
    assert run_line(session, "status web1") == (ExitCode.FAILED, False)
    assert session.err.getvalue().startswith("vpsshell: internal error: AttributeError")
    assert session.err.getvalue().count("\n") == 1


def test_a_helper_error_is_its_line_and_its_code() -> None:
    session = FakeHelperSession(Denied("web9: no such domain or permission denied"))
    assert run_line(session, "start web9") == (ExitCode.DENIED, False)
    assert session.err.getvalue() == "vpsshell: web9: no such domain or permission denied\n"


def test_exit_ends_the_session() -> None:
    assert run_line(FakeHelperSession(None), "exit") == (ExitCode.OK, True)


def test_reading_lines_from_a_pipe() -> None:
    stream = io.BytesIO(b"list\nst\xffart\n" + b"A" * (MAX_INPUT_LINE + 10) + b" start\nwhoami")
    assert _read_line(stream) == "list"
    assert _read_line(stream) == "st\ufffdart"  # then refused: not printable ASCII
    assert len(_read_line(stream) or "") == MAX_INPUT_LINE + 1  # then refused: too long
    assert _read_line(stream) == "whoami"  # the long line's tail was dropped
    assert _read_line(stream) is None
