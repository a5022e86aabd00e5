"""The one owner of exit codes (``vpsshell.shell.outcome``): every outcome of a command is one
exit code and at most one line, the same in ``vpsshell -c`` and the interactive shell, and never
a traceback."""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from vpsshell.errors import (
    ERROR_KINDS,
    ActionFailed,
    ConfirmRequired,
    Denied,
    ExitCode,
    TemporaryFailure,
    Unavailable,
    UsageError,
    VpsError,
    error_from_wire,
)
from vpsshell.shell import launch, oneshot, outcome
from vpsshell.shell.environment import Environment
from vpsshell.shell.interactive import run_line
from vpsshell.shell.outcome import INTERRUPTED, conclude, outcome_of, session_end
from vpsshell.shell.session import Session
from vpsshell.shell.signals import Hangup

# design.md, "Exit codes"; vpsshell(1), EXIT STATUS
WIRE_KIND_CODES = {
    "failed": 1,
    "usage": 64,
    "unavailable": 69,
    "temporary": 75,
    "denied": 77,
    "confirm": 77,
}


def environment(stderr: io.StringIO | None = None) -> Environment:
    return Environment(
        io.StringIO(), io.StringIO(), stderr or io.StringIO(), False, False, False, False
    )


class Recorded:
    """What ``conclude`` did besides writing: the stdout silenced, the signals re-raised."""

    def __init__(self) -> None:
        self.silenced = 0
        self.signals: list[int] = []


@pytest.fixture(autouse=True)
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    """The process's own fd 1 and signals stay untouched: ``conclude``'s acts are recorded."""
    seen = Recorded()

    def silence() -> None:
        seen.silenced += 1

    monkeypatch.setattr(outcome, "silence_stdout", silence)
    monkeypatch.setattr(outcome, "take_course", seen.signals.append)
    return seen


def test_every_error_kind_on_the_wire_has_its_documented_code() -> None:
    assert set(ERROR_KINDS) == set(WIRE_KIND_CODES)  # a new kind needs a code and a doc
    for kind, code in WIRE_KIND_CODES.items():
        mapped = outcome_of(error_from_wire(kind, f"a {kind} message"))
        assert (mapped.code, mapped.line) == (code, f"a {kind} message")
    assert outcome_of(error_from_wire("no-such-kind", "odd")).code == ExitCode.FAILED
    assert outcome_of(VpsError("plain")).code == ExitCode.FAILED


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ActionFailed("web1: domain is not running"), 1),
        (UsageError("list: unexpected argument 'x'"), 64),
        (Unavailable("cannot reach the vpsshell helper at /run/x: No such file"), 69),
        (TemporaryFailure("web1: busy"), 75),
        (Denied("web9: no such domain or permission denied"), 77),
        (ConfirmRequired("cancelled"), 77),
    ],
)
def test_a_vps_error_is_its_message_on_one_line_and_its_code(error: VpsError, code: int) -> None:
    err = io.StringIO()
    assert conclude(error, environment(err)).code == code
    assert err.getvalue() == f"vpsshell: {error.message}\n"


def test_ctrl_c_is_130_and_says_the_request_goes_on() -> None:
    err = io.StringIO()
    assert conclude(KeyboardInterrupt(), environment(err)).code == ExitCode.INTERRUPTED == 130
    assert err.getvalue() == f"vpsshell: {INTERRUPTED}\n"


def test_a_reader_that_has_gone_is_1_said_to_nobody(recorded: Recorded) -> None:
    err = io.StringIO()
    assert conclude(BrokenPipeError(32, "Broken pipe"), environment(err)).code == 1
    assert err.getvalue() == ""
    assert recorded.silenced == 1  # nothing buffered for stdout becomes a message at exit


def test_a_bug_is_one_line_exit_1_never_a_traceback(recorded: Recorded) -> None:
    err = io.StringIO()
    try:
        "a reply".get("name")  # type: ignore[attr-defined]  # the bug, raised for real
    except AttributeError as bug:
        assert conclude(bug, environment(err)).code == ExitCode.FAILED
    assert err.getvalue() == (
        "vpsshell: internal error: AttributeError: 'str' object has no attribute 'get'\n"
    )
    assert "Traceback" not in err.getvalue()
    assert recorded.silenced == 0


def test_a_bug_with_many_lines_or_much_text_is_still_one_line() -> None:
    err = io.StringIO()
    conclude(ValueError("first\nsecond\x1b[2J" + "x" * 10_000), environment(err))
    line = err.getvalue()
    assert line.count("\n") == 1 and line.endswith("...\n")
    assert "\x1b" not in line and "\\n" in line  # escapes shown, not acted on
    assert len(line) < 400
    err = io.StringIO()
    conclude(RuntimeError(), environment(err))
    assert err.getvalue() == "vpsshell: internal error: RuntimeError\n"


def test_a_helper_message_is_shown_inert() -> None:
    err = io.StringIO()
    conclude(ActionFailed("web1: \x1b]0;owned\x07 failed\u202e"), environment(err))
    assert err.getvalue() == "vpsshell: web1: \\x1b]0;owned\\x07 failed\\u202e\n"


def test_a_signal_that_ended_a_session_takes_its_course_quietly(recorded: Recorded) -> None:
    err = io.StringIO()
    ended = conclude(Hangup(signal.SIGHUP), environment(err))
    assert (ended.code, ended.ends_session, err.getvalue()) == (0, True, "")
    assert recorded.signals == [signal.SIGHUP]
    assert not conclude(Denied("no"), environment()).ends_session


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_line_nobody_can_read_changes_nothing() -> None:
    assert conclude(AttributeError("x"), environment(BrokenStream())).code == 1
    assert conclude(KeyboardInterrupt(), environment(BrokenStream())).code == 130


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("takeover", 75),
        ("too-slow", 75),
        ("time-limit", 75),
        ("revoked", 77),
        ("kicked", 77),
        ("helper-stopping", 69),
        ("something new", 1),
    ],
)
def test_why_the_helper_ended_a_session_maps_to_an_error(reason: str, code: int) -> None:
    ended = session_end(reason, "the helper's words")
    assert ended is not None
    assert outcome_of(ended) == (code, "the helper's words", 0)
    assert outcome.session_end_code(reason) == code


def test_a_session_the_tenant_detached_is_no_error() -> None:
    assert session_end("detached", "") is None
    assert outcome.session_end_code("detached") == 0
    assert session_end("kicked", "").message == "kicked"  # type: ignore[union-attr]


# -- both modes: the same code and the same line for every outcome --------------------------


class FakeHelperSession(Session):
    """A session whose every helper request raises ``answer`` (or returns it)."""

    answer: Any = None  # set on the class: ``run_oneshot`` builds its own session

    def __init__(self, socket_path: str, env: Environment, *, interactive: bool) -> None:
        super().__init__("/nonexistent.sock", env, interactive=interactive)

    def call(self, op: str, args: dict[str, Any], *, timeout: float = 90.0) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """As in the interactive shell, where ``run_line`` arms SIGINT only while a line runs."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


OUTCOMES = [
    Denied("web1: no such domain or permission denied"),
    UsageError("log: --lines must be at least 1"),
    Unavailable("cannot reach the vpsshell helper at /nonexistent.sock: No such file"),
    TemporaryFailure("web1: busy with another action"),
    ActionFailed("web1: domain is not running"),
    ConfirmRequired("cancelled"),
    KeyboardInterrupt(),
    BrokenPipeError(32, "Broken pipe"),
    AttributeError("'str' object has no attribute 'get'"),
    "a reply of the wrong shape",  # a real bug: render finds no fields in a str
]


@pytest.mark.usefixtures("sigint_ignored")
@pytest.mark.parametrize("answer", OUTCOMES, ids=lambda answer: type(answer).__name__)
def test_oneshot_and_the_interactive_shell_agree(
    answer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = "status web1"
    monkeypatch.setattr(oneshot, "own_dispositions", lambda *, interactive: None)
    monkeypatch.setattr(oneshot, "Session", FakeHelperSession)
    monkeypatch.setattr(FakeHelperSession, "answer", answer)
    oneshot_err = io.StringIO()
    oneshot_code = oneshot.run_oneshot(line, environment(oneshot_err))

    session = FakeHelperSession("", environment(), interactive=True)
    interactive_code, leave = run_line(session, line)

    assert oneshot_code == interactive_code and not leave
    assert session.env.stderr.getvalue() == oneshot_err.getvalue()  # type: ignore[attr-defined]
    assert oneshot_err.getvalue().count("\n") <= 1
    assert "Traceback" not in oneshot_err.getvalue()
    if isinstance(answer, BaseException) and not isinstance(answer, BrokenPipeError):
        assert oneshot_code == outcome_of(answer).code
    elif isinstance(answer, str):
        assert oneshot_code == ExitCode.FAILED
        assert oneshot_err.getvalue().startswith("vpsshell: internal error: AttributeError")


def test_wrong_arguments_to_the_program_are_usage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launch.main(["-x", "list"]) == ExitCode.USAGE
    assert capsys.readouterr().err == f"vpsshell: {launch.USAGE}\n"


def test_a_stream_closed_at_start_is_dev_null(monkeypatch: pytest.MonkeyPatch) -> None:
    """``vpsshell -c list <&-``: Python has None for a closed descriptor; that used to be an
    AttributeError before any command ran."""
    import sys

    monkeypatch.setattr(sys, "stdin", None)
    env = Environment.from_process()
    assert env.stdin is sys.stdin and env.stdin.read() == ""
    assert env.stdin_isatty is False
    env.stdin.close()
