"""The shell's own signal dispositions, and how a session notices that its tenant is gone.

A shell does not trust what it inherited: started with SIGINT ignored (a background job,
``nohup``, ``setsid`` under ``trap '' INT``) Python installs no ``KeyboardInterrupt`` at all,
and started with SIGHUP ignored a session would outlive its terminal. ``own_dispositions``
sets every one the shell relies on, for its mode:

=========  ===============================================  ====================================
signal     ``vpsshell -c``                                  interactive
=========  ===============================================  ====================================
SIGINT     ``KeyboardInterrupt``: the command stops         ignored; armed while a command runs
           waiting ("interrupted", 130)                     (``interactive.run_line``), as -c
SIGQUIT    default                                          ignored (like any interactive shell)
SIGTSTP    default                                          ignored: no job control to return to
SIGHUP     default: the process ends, the helper sees the connection close
SIGTERM    default, as SIGHUP
SIGPIPE    ignored: a write to a reader that has gone is ``EPIPE``, handled where it happens
=========  ===============================================  ====================================

While a console or an ``events --follow`` session runs (``ending_signals``), SIGHUP, SIGTERM
and SIGQUIT (unless the mode ignores it) end it cleanly instead: the helper is told (a console
detaches at once, freeing its writer slot), the terminal is restored, and then the signal takes
its course (``take_course``).
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Hangup(Exception):
    """SIGHUP, SIGTERM or SIGQUIT while a session runs: end it cleanly, then let the signal
    take its course (``signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_hangup(signum: int, frame: FrameType | None) -> None:
    raise Hangup(signum)


def own_dispositions(*, interactive: bool) -> None:
    """Set what each signal does in this mode, whatever was inherited (see the table above).

    With ``_signal``, the interpreter's own module and already loaded: ``signal`` would add its
    enum conversions (about 0.4 ms) to every ``vpsshell -c``, a new process per ssh command."""
    import _signal  # type: ignore[import-not-found]  # no stubs; the functions of ``signal``

    dispositions = {
        _signal.SIGPIPE: _signal.SIG_IGN,
        _signal.SIGHUP: _signal.SIG_DFL,
        _signal.SIGTERM: _signal.SIG_DFL,
    }
    if interactive:
        dispositions[_signal.SIGINT] = _signal.SIG_IGN
        dispositions[_signal.SIGQUIT] = _signal.SIG_IGN
        dispositions[_signal.SIGTSTP] = _signal.SIG_IGN
    else:
        dispositions[_signal.SIGINT] = _signal.default_int_handler
        dispositions[_signal.SIGQUIT] = _signal.SIG_DFL
        dispositions[_signal.SIGTSTP] = _signal.SIG_DFL
    for signum, handler in dispositions.items():
        _signal.signal(signum, handler)


@contextmanager
def ending_signals() -> Iterator[None]:
    """SIGHUP, SIGTERM and SIGQUIT raise ``Hangup`` inside, except one this mode ignores; the
    dispositions are put back on the way out. The caller catches ``Hangup``, ends its session,
    then calls ``take_course``."""
    import signal

    previous = {
        signum: signal.signal(signum, raise_hangup)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT)
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def take_course(signum: int) -> None:
    """After a clean end: deliver ``signum`` again under the shell's own disposition (by
    default the process ends, as killed by it; an interactive shell whose terminal hung up does
    not stay at a prompt nobody sees). Returns if that disposition ignores or handles it."""
    import signal
    import sys

    for stream in (sys.stdout, sys.stderr):  # the default disposition flushes nothing
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.raise_signal(signum)


# what ``poll`` reports for an fd whose other end has gone (asked for nothing else)
GONE = select.POLLERR | select.POLLHUP | select.POLLNVAL


def silence_stdout() -> None:
    """stdout's reader has gone: point fd 1 at /dev/null, so that nothing buffered for it
    turns into an error message (or a traceback) when the interpreter flushes it at exit."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
