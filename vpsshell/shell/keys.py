"""Key bindings of the interactive shell: what a login shell must not let a key do.

prompt_toolkit's defaults would let Ctrl-Z suspend (or insert a literal ^Z), Ctrl-Q/Ctrl-V
insert the next key literally (a line break, an escape), a bracketed paste insert several lines
at once, and Ctrl-X Ctrl-E / Meta-! start an editor or a shell. Here these keys do nothing,
and typed or pasted text enters the line only if it passes the same character check as
``vpsshell -c`` (``grammar.check_characters``); otherwise ``on_refused`` gets the reason and
the line is left as it was. The editor and the system prompt are also switched off where the
``PromptSession`` is made (``interactive.py``); these bindings are the second lock.
"""

from __future__ import annotations

from collections.abc import Callable

from prompt_toolkit.filters import emacs_insert_mode
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys

from vpsshell.errors import UsageError
from vpsshell.shell.grammar import check_characters

# keys that would suspend, insert the next key literally, or open an editor / a shell
DEAD_KEYS: tuple[tuple[str, ...], ...] = (
    ("c-z",),
    ("c-q",),
    ("c-v",),
    ("c-x", "c-e"),
    ("escape", "!"),
    ("escape", "c-z"),
)


def build_key_bindings(on_refused: Callable[[str], None]) -> KeyBindings:
    bindings = KeyBindings()

    def ignore(event: KeyPressEvent) -> None:
        """Deliberately nothing."""

    for keys in DEAD_KEYS:
        bindings.add(*keys)(ignore)

    def insert_checked(event: KeyPressEvent, text: str, what: str) -> None:
        try:
            check_characters(text)
        except UsageError as exc:
            event.app.output.bell()
            on_refused(f"{what} refused: {exc.message}")
            return
        event.current_buffer.insert_text(text)

    @bindings.add(Keys.Any, filter=emacs_insert_mode)
    def _typed(event: KeyPressEvent) -> None:
        insert_checked(event, event.data * event.arg, "key")

    @bindings.add(Keys.BracketedPaste)
    def _paste(event: KeyPressEvent) -> None:
        text = event.data
        # one trailing line break is how a copied line usually ends; any other is refused
        for ending in ("\r\n", "\n", "\r"):
            if text.endswith(ending):
                text = text[: -len(ending)]
                break
        insert_checked(event, text, "paste")

    return bindings
