"""The line editor as the shell builds it, driven through pipe input: what each key may do.

These are the same ``PromptSession`` settings and key bindings a tenant gets (built by
``interactive.build_prompt_session``); the pty tests in tests/e2e repeat the dangerous ones
against the real program.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from prompt_toolkit.filters import to_filter
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from vpsshell.shell.environment import Environment
from vpsshell.shell.interactive import build_prompt_session
from vpsshell.shell.session import Session
from vpsshell.shell.settings import ShellSettings
from vpsshell.shell.watch import DomainWatch

PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"


class Editor:
    def __init__(self) -> None:
        env = Environment(io.StringIO(), io.StringIO(), io.StringIO(), True, True, True, False)
        self.session = Session("/nonexistent.sock", env, interactive=True)
        self.watch = DomainWatch("/nonexistent/vpsshelld.sock", 10.0)  # never run here
        self.watch.seed([{"name": "web1", "state": "running"}, {"name": "web2"}])
        self.refused: list[str] = []

    def line(self, keys: str) -> str:
        """What the editor returns after these keys (they must end the line)."""
        with create_pipe_input() as pipe:
            pipe.send_text(keys)
            prompt = build_prompt_session(
                self.session,
                self.watch,
                ShellSettings(history=False),
                self.refused.append,
                input=pipe,
                output=DummyOutput(),
            )
            return prompt.prompt()


@pytest.fixture
def editor() -> Iterator[Editor]:
    yield Editor()


def test_editor_shell_and_suspend_are_off(editor: Editor) -> None:
    with create_pipe_input() as pipe:
        prompt = build_prompt_session(
            editor.session, editor.watch, ShellSettings(history=False), print, input=pipe
        )
    assert not to_filter(prompt.enable_open_in_editor)()
    assert not to_filter(prompt.enable_system_prompt)()
    assert not to_filter(prompt.enable_suspend)()


def test_plain_typing_and_line_editing(editor: Editor) -> None:
    assert editor.line("status web1\r") == "status web1"
    assert editor.line("start web2\x15status web2\r") == "status web2"  # Ctrl-U clears


def test_keys_that_would_insert_control_characters_insert_nothing(editor: Editor) -> None:
    # Ctrl-Z, Ctrl-Q Ctrl-Z, Ctrl-V Ctrl-Z, Ctrl-Q Esc
    assert editor.line("status web1\x1a\x11\x1a\x16\x1a\r") == "status web1"
    # a quoted line break is just Enter: the line ends, nothing is inside it
    assert editor.line("status web1\x11\n") == "status web1"
    # Ctrl-X Ctrl-E (editor), Meta-! (shell)
    assert editor.line("list\x18\x05\x1b!\r") == "list"


def test_typed_characters_outside_printable_ascii_are_refused(editor: Editor) -> None:
    assert editor.line("st\u00e4tus\r") == "sttus"
    assert editor.refused == [
        "key refused: rejected character U+00E4 at position 1 (only printable ASCII is accepted)"
    ]


def test_bracketed_paste_of_two_lines_is_refused_whole(editor: Editor) -> None:
    assert editor.line(f"{PASTE_START}list\nstart web2{PASTE_END}\r") == ""
    assert editor.line(f"{PASTE_START}status \x1b]0;x\x07web1{PASTE_END}\r") == ""
    assert [message.split(":")[1].strip() for message in editor.refused] == [
        "rejected character U+000A at position 5 (only printable ASCII is accepted)",
        "rejected character U+001B at position 8 (only printable ASCII is accepted)",
    ]


def test_a_pasted_line_keeps_its_text_and_loses_its_line_break(editor: Editor) -> None:
    assert editor.line(f"{PASTE_START}status web1\r\n{PASTE_END}\r") == "status web1"
    assert editor.refused == []
