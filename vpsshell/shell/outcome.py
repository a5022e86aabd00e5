"""How a command ends for the tenant: its exit code and at most one line on stderr.

This is the one place that decides both, for ``vpsshell -c`` and the interactive shell alike
(httpie's ``core.raw_main`` is the model). Handlers, the client and the console and follow
sessions raise; each mode hands whatever escaped a command to ``conclude``, which shows the
line and returns the ``Outcome``; ``outcome_of`` is the mapping itself:

==============================  =====  ==============================================
what escaped                    code   the line (after ``vpsshell: ``)
==============================  =====  ==============================================
``VpsError`` (helper, grammar)  its    its message
``KeyboardInterrupt`` (Ctrl-C)  130    ``INTERRUPTED``
``BrokenPipeError``             1      none: nobody reads the output any more
``Hangup`` (SIGHUP, SIGTERM,    0      none; the signal then takes its course
SIGQUIT ending a session)
anything else: a bug            1      ``internal error: TYPE: TEXT``
==============================  =====  ==============================================

The interactive shell does not exit after a command: the code is its status, and its exit
status at the end of its input. Why the helper ended a console or ``events --follow`` session
maps to an error, and so to a code, here too (``session_end``).

It must never let a traceback reach a tenant, never write more than one line for one outcome,
and never show text from outside (a helper's message, an exception's) but through ``inert``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from vpsshell.errors import (
    ActionFailed,
    Denied,
    ExitCode,
    TemporaryFailure,
    Unavailable,
    VpsError,
)
from vpsshell.shell.render import show_error
from vpsshell.shell.signals import Hangup, silence_stdout, take_course

if TYPE_CHECKING:
    from vpsshell.shell.environment import Environment

# what a mode catches around a command and hands to ``conclude``: everything but SystemExit
CAUGHT = (Exception, KeyboardInterrupt)

INTERRUPTED = "interrupted (a request the helper already received still completes)"
MAX_DETAIL = 300  # characters of a bug's own text in the internal-error line

# why the helper ended a console or ``events --follow`` session -> what that end is for the
# tenant (None: the end they asked for); an unknown reason is a plain failure
SESSION_ENDS: dict[str, type[VpsError] | None] = {
    "detached": None,
    "takeover": TemporaryFailure,
    "too-slow": TemporaryFailure,
    "time-limit": TemporaryFailure,
    "no-answer": TemporaryFailure,  # this client was stopped too long (a suspended ssh)
    "revoked": Denied,
    "kicked": Denied,
    "helper-stopping": Unavailable,
}


class Outcome(NamedTuple):
    code: ExitCode
    line: str = ""  # what to tell the tenant, without the "vpsshell: " prefix; "": nothing
    signum: int = 0  # a signal that ended a session, to take its course once this is shown

    @property
    def ends_session(self) -> bool:
        """Whether an interactive shell stops here (a signal ended it)."""
        return self.signum != 0


def outcome_of(exc: BaseException) -> Outcome:
    """The exit code and the line for whatever escaped a command. Pure: shows nothing."""
    if isinstance(exc, VpsError):
        return Outcome(exc.exit_code, exc.message)
    if isinstance(exc, KeyboardInterrupt):
        # the helper sees the client leave; an action it already started goes on (a --wait
        # stops waiting, nothing more)
        return Outcome(ExitCode.INTERRUPTED, INTERRUPTED)
    if isinstance(exc, BrokenPipeError):
        return Outcome(ExitCode.FAILED)
    if isinstance(exc, Hangup):
        return Outcome(ExitCode.OK, signum=exc.signum)
    detail = str(exc)
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "..."
    line = f"internal error: {type(exc).__name__}"
    return Outcome(ExitCode.FAILED, f"{line}: {detail}" if detail else line)


def conclude(exc: BaseException, env: Environment) -> Outcome:
    """Show the outcome of ``exc`` (one line at most) and act on it; returns it.

    A reader of stdout that has gone gets nothing more (stdout goes to /dev/null, so that
    nothing buffered for it turns into a message at exit); a signal that ended a session takes
    its course, which by default ends the process here."""
    outcome = outcome_of(exc)
    if isinstance(exc, BrokenPipeError):
        silence_stdout()
    if outcome.line:
        try:
            show_error(outcome.line, env)
            env.stderr.flush()
        except (OSError, ValueError):
            pass  # nobody is left to read it
    if outcome.signum:
        take_course(outcome.signum)
    return outcome


def session_end(reason: str, text: str) -> VpsError | None:
    """What the helper's end of a console or follow session is: None for the end the tenant
    asked for, else the error to conclude with (its text the helper's, its code by the reason)."""
    kind = SESSION_ENDS.get(reason, ActionFailed)
    return None if kind is None else kind(text or reason)


def session_end_code(reason: str) -> ExitCode:
    """The exit code of the helper's end of a session (the console shows its own note)."""
    ended = session_end(reason, reason)
    return ExitCode.OK if ended is None else ended.exit_code
