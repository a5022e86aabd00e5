"""The console's escape reader: what each key at the start of a line (or not) turns into."""

from __future__ import annotations

import pytest

from vpsshell.shell.escapes import (
    NO_ESCAPE,
    AskReboot,
    AskSysrq,
    Detach,
    EscapeReader,
    Note,
    Reboot,
    Send,
    Sysrq,
    escape_name,
    help_text,
    parse_escape,
)


def sent(actions: list[object]) -> bytes:
    return b"".join(action.data for action in actions if isinstance(action, Send))


def feed_each(reader: EscapeReader, data: bytes) -> list[object]:
    """Key by key, as a person types: the state carries from one read to the next."""
    actions: list[object] = []
    for byte in data:
        actions.extend(reader.feed(bytes([byte])))
    return actions


@pytest.mark.parametrize("feed", [EscapeReader.feed, feed_each])
def test_tilde_dot_at_the_start_detaches(feed: object) -> None:
    assert EscapeReader().feed(b"~.") == [Detach()]
    reader = EscapeReader()
    actions = reader.feed(b"ls\r~.") if feed is EscapeReader.feed else feed_each(reader, b"ls\r~.")
    assert sent(actions) == b"ls\r" and actions[-1] == Detach()


def test_a_tilde_in_the_middle_of_a_line_is_sent_at_once() -> None:
    reader = EscapeReader()
    assert reader.feed(b"echo a") == [Send(b"echo a")]
    assert reader.feed(b"~") == [Send(b"~")]
    assert reader.feed(b".") == [Send(b".")]


def test_a_tilde_after_enter_is_held_until_the_next_key() -> None:
    reader = EscapeReader()
    assert reader.feed(b"x\r~") == [Send(b"x\r")]
    assert reader.feed(b"~") == [Send(b"~")]  # ~~: one ~
    assert reader.feed(b"~") == [Send(b"~")]  # no longer at the start of a line
    reader = EscapeReader()
    assert reader.feed(b"~") == [] and reader.feed(b"x") == [Send(b"~x")]


def test_help_sends_nothing_and_keeps_the_line_start() -> None:
    reader = EscapeReader()
    actions = reader.feed(b"~?")
    assert len(actions) == 1 and isinstance(actions[0], Note) and "~B" in actions[0].text
    assert reader.feed(b"~.") == [Detach()]


def test_sysrq_and_reboot() -> None:
    reader = EscapeReader()
    assert reader.feed(b"~B") == [AskSysrq()]
    assert reader.feed(b"m") == [Sysrq("m")]
    assert reader.feed(b"~Bm") == [AskSysrq(), Sysrq("m")]
    bad = reader.feed(b"~B!")
    assert bad[0] == AskSysrq() and isinstance(bad[1], Note)
    assert reader.feed(b"~Ry") == [AskReboot(), Reboot()]
    no = reader.feed(b"~Rn")
    assert no[0] == AskReboot() and no[1] == Note("not rebooted")
    assert reader.feed(b"~b") == [Send(b"~b")]  # lowercase: not an escape


def test_ctrl_bracket_detaches_anywhere_even_without_escapes() -> None:
    assert EscapeReader().feed(b"abc\x1ddef") == [Send(b"abc"), Detach()]
    assert EscapeReader(NO_ESCAPE).feed(b"\x1d") == [Detach()]
    reader = EscapeReader()
    assert reader.feed(b"~B") == [AskSysrq()] and reader.feed(b"\x1d") == [Detach()]


def test_another_escape_character_and_none() -> None:
    reader = EscapeReader(parse_escape("^A"))
    assert reader.feed(b"~.") == [Send(b"~.")]
    assert reader.feed(b"\r\x01.") == [Send(b"\r"), Detach()]
    assert EscapeReader(NO_ESCAPE).feed(b"~.~?") == [Send(b"~.~?")]


def test_a_watcher_sends_nothing_and_may_not_sysrq_or_reboot() -> None:
    reader = EscapeReader(writer=False)
    assert reader.feed(b"echo typed\r") == []
    note = reader.feed(b"~B")
    assert len(note) == 1 and isinstance(note[0], Note)
    assert reader.feed(b"m~R") == []
    assert reader.feed(b"\r~.") == [Detach()]


@pytest.mark.parametrize(
    ("text", "code"), [("~", 0x7E), ("^A", 1), ("^a", 1), ("&", 0x26), ("none", NO_ESCAPE)]
)
def test_parse_escape(text: str, code: int) -> None:
    assert parse_escape(text) == code
    assert escape_name(code) == ("^A" if text == "^a" else text)


@pytest.mark.parametrize("text", ["", "ab", "^M", "^J", "^]", "^1", " ", "é", "^"[:0] + "^^"])
def test_parse_escape_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_escape(text)


def test_help_names_the_escape_character() -> None:
    assert "^A." in help_text(1) and "~" not in help_text(1).split("\r\n")[1]
    assert "off" in help_text(NO_ESCAPE)


def test_console_escape_option_and_config_key() -> None:
    from vpsshell.errors import UsageError
    from vpsshell.shell.commands import VERBS
    from vpsshell.shell.grammar import parse
    from vpsshell.shell.settings import parse_settings

    assert parse("console web1 --escape=^A", VERBS).options == {"escape": 1}
    assert parse("console web1 --escape=none", VERBS).options == {"escape": NO_ESCAPE}
    for line in ("console web1 --escape", "console web1 --escape=^M", "console web1 --escape=xy"):
        with pytest.raises(UsageError):
            parse(line, VERBS)
    settings, warnings = parse_settings({"console_escape": "^B"}, "test")
    assert settings.console_escape == "^B" and warnings == []
    settings, warnings = parse_settings({"console_escape": "^]"}, "test")
    assert settings.console_escape == "~" and len(warnings) == 1


def test_completion_offers_the_escape_option_with_its_equals_sign() -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from vpsshell.shell.commands import VERBS
    from vpsshell.shell.completer import ShellCompleter

    line = "console web1 --esc"
    completions = ShellCompleter(VERBS, lambda: ["web1"]).get_completions(
        Document(line), CompleteEvent()
    )
    assert [completion.text for completion in completions] == ["--escape="]
