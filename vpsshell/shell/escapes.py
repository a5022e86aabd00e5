"""Console escapes, ssh style: what the tenant's keystrokes mean before they reach the guest.

At the start of a line (the start of the session, or after Enter) the escape character (``~``
unless the session or the admin chose another, or none) is held until the next key decides:

- ``~.`` detach; ``~?`` list the escapes (locally, nothing is sent);
- ``~B`` then a key: send that magic SysRq key (the helper's policy decides);
- ``~R``: reboot the domain, after a y/n answer (the helper's policy decides);
- ``~~``: one ``~`` for the guest; ``~`` and any other key: both go to the guest.

Ctrl-] detaches at any time, escapes or not. A ``~`` in the middle of a line is sent at once.
Everything else passes unchanged. The reader only decides; the console acts (``console.py``).
A watcher's reader never turns keys into ``Send`` (watchers send nothing) and refuses ``~B`` and
``~R`` at once (they are the writer's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DETACH_KEY = 0x1D  # Ctrl-]
DEFAULT_ESCAPE = ord("~")
NO_ESCAPE = 0  # escapes off (NUL is never an escape character)
_ENTER = (0x0D, 0x0A)
# control characters that cannot be escapes: Enter/line feed end lines, Ctrl-] detaches
_NOT_ESCAPES = {0x0A, 0x0D, DETACH_KEY}


@dataclass(frozen=True)
class Send:
    """Bytes for the guest."""

    data: bytes


@dataclass(frozen=True)
class Detach:
    """End the session (``~.`` or Ctrl-])."""


@dataclass(frozen=True)
class Note:
    """A line to show locally, nothing sent (``~?``, a bad SysRq key, a refused escape)."""

    text: str


@dataclass(frozen=True)
class AskSysrq:
    """``~B``: prompt for the SysRq key."""


@dataclass(frozen=True)
class Sysrq:
    """Send this magic SysRq key (a request, not console input)."""

    key: str


@dataclass(frozen=True)
class AskReboot:
    """``~R``: prompt for y/n."""


@dataclass(frozen=True)
class Reboot:
    """The answer to ``~R`` was y: reboot (a request)."""


Action = Send | Detach | Note | AskSysrq | Sysrq | AskReboot | Reboot


def parse_escape(text: str) -> int:
    """The escape character from its spelling: ``^X`` (a control character, ``^A``..``^Z``
    except ``^J``, ``^M``), one printable character, or ``none`` (``NO_ESCAPE``).
    Raises ValueError with the reason."""
    if text == "none":
        return NO_ESCAPE
    if len(text) == 1 and "!" <= text <= "~":
        return ord(text)
    if len(text) == 2 and text[0] == "^" and text[1].isascii() and text[1].isalpha():
        code = ord(text[1].upper()) - 0x40
        if code not in _NOT_ESCAPES:
            return code
    raise ValueError(
        f"{text!r} is not an escape character (one printable character, ^A..^Z but not ^J or ^M,"
        " or none)"
    )


def escape_name(escape: int) -> str:
    """How the escape character is spelled for the tenant: ``~``, ``^A``, ``none``."""
    if escape == NO_ESCAPE:
        return "none"
    if escape < 0x20:
        return "^" + chr(escape + 0x40)
    return chr(escape)


def help_text(escape: int) -> str:
    """The list ``~?`` shows, with the session's escape character."""
    if escape == NO_ESCAPE:
        return "Escapes are off in this session. Ctrl-] detaches."
    e = escape_name(escape)
    return "\r\n".join(
        [
            "Escapes (at the start of a line, after Enter):",
            f" {e}.  detach",
            f" {e}?  this list",
            f" {e}B  then a key: send that magic SysRq key (0-9, a-z) to the domain",
            f" {e}R  reboot the domain (asks y/n)",
            f" {e}{e}  send one {e}",
            "Ctrl-] detaches at any time.",
        ]
    )


class EscapeReader:
    """Turns the tenant's keystrokes into actions; keeps its state between reads, so an escape
    character held at the end of one read is decided by the first key of the next."""

    def __init__(self, escape: int = DEFAULT_ESCAPE, *, writer: bool = True) -> None:
        self.escape = escape
        self.writer = writer
        self.at_line_start = True
        self._state = "text"  # text | escape (escape held) | sysrq (key next) | reboot (y/n)

    def feed(self, data: bytes) -> list[Action]:
        actions: list[Action] = []
        pending = bytearray()

        def emit(action: Action) -> None:
            if pending:
                actions.append(Send(bytes(pending)))
                pending.clear()
            actions.append(action)

        for byte in data:
            if byte == DETACH_KEY:
                emit(Detach())
                self._state = "text"
                return actions  # what follows Ctrl-] belongs to nobody
            state, self._state = self._state, "text"
            if state == "escape":
                self._decide_escape(byte, pending, emit)
            elif state == "sysrq":
                key = chr(byte)
                if key.isascii() and (key.isdigit() or key.islower()):
                    emit(Sysrq(key))
                else:
                    emit(Note(f"{key!r} is not a SysRq key (0-9, a-z); nothing sent"))
            elif state == "reboot":
                if byte in (ord("y"), ord("Y")):
                    emit(Reboot())
                else:
                    emit(Note("not rebooted"))
            elif byte == self.escape and self.at_line_start and self.escape != NO_ESCAPE:
                self._state = "escape"
            else:
                pending.append(byte)
                self.at_line_start = byte in _ENTER
        if pending:
            actions.append(Send(bytes(pending)))
        if not self.writer:
            actions = [action for action in actions if not isinstance(action, Send)]
        return actions

    def _decide_escape(self, byte: int, pending: bytearray, emit: Callable[[Action], None]) -> None:
        """The key after a held escape character, at the start of a line."""
        escape = bytes([self.escape])
        command = chr(byte)
        if command == ".":
            emit(Detach())
        elif command == "?":
            emit(Note(help_text(self.escape)))
        elif command in ("B", "R") and not self.writer:
            emit(
                Note(
                    f"{escape_name(self.escape)}{command} is for the console's writer, not a"
                    " watcher; nothing sent"
                )
            )
        elif command == "B":
            self._state = "sysrq"
            emit(AskSysrq())
        elif command == "R":
            self._state = "reboot"
            emit(AskReboot())
        elif byte == self.escape:
            pending.extend(escape)
            self.at_line_start = False
        else:  # not an escape after all: both keys go to the guest, as typed
            pending.extend(escape + bytes([byte]))
            self.at_line_start = byte in _ENTER
