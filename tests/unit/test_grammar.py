"""The closed grammar: what parses, and what is refused before anything reaches the helper."""

from __future__ import annotations

import pytest

from vpsshell.errors import UsageError
from vpsshell.shell.commands import VERBS
from vpsshell.shell.grammar import MAX_LINE_CHARS, parse


def test_verbs_aliases_and_options() -> None:
    parsed = parse("shutdown web1 --wait=30 --force", VERBS)
    assert parsed is not None
    assert parsed.verb.name == "shutdown" and parsed.domain == "web1"
    assert parsed.options == {"wait": 30, "force": True}
    boot = parse("boot web1", VERBS)
    assert boot is not None and boot.verb.name == "start"
    destroy = parse("destroy web1", VERBS)
    assert destroy is not None and destroy.verb.name == "poweroff"
    bare_wait = parse("shutdown web1 --wait", VERBS)
    assert bare_wait is not None and bare_wait.options == {"wait": -1}
    assert parse("   ", VERBS) is None


def test_options_may_come_before_the_domain() -> None:
    parsed = parse("status --json web1", VERBS)
    assert parsed is not None and parsed.domain == "web1" and parsed.options == {"json": True}


def test_default_domain_fills_in() -> None:
    parsed = parse("reboot", VERBS, default_domain="web2")
    assert parsed is not None and parsed.domain == "web2"
    explicit = parse("reboot web1", VERBS, default_domain="web2")
    assert explicit is not None and explicit.domain == "web1"


@pytest.mark.parametrize(
    "line",
    [
        "frobnicate",
        "start --help",
        "start -x",
        "start -",
        "list\nstart web1",
        "list\rx",
        "list\x00",
        "list\x85",  # NEL
        "list\u2028",  # line separator
        "list\u2029",  # paragraph separator
        "\u0455tart web1",  # Cyrillic dze
        "ｓtart web1",  # fullwidth s
        "start web1\u202e",  # bidi override
        "start\tweb1",
        "start web1 web2",
        "start",
        "start ../etc",
        "start web1;reboot",
        "start $(reboot)",
        "shutdown web1 --wait=-1",
        "shutdown web1 --wait=9999",
        "shutdown web1 --wait=1e3",
        "shutdown web1 --force=yes",
        "list --json --json",
        "list --nope",
        "x" * (MAX_LINE_CHARS + 1),
        " ".join(["list"] * 40),
    ],
)
def test_refused(line: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(line, VERBS)
    assert "\n" not in info.value.message


def test_refusal_names_the_character() -> None:
    with pytest.raises(UsageError, match="U\\+0455 at position 1"):
        parse("\u0455tart web1", VERBS)


def test_every_verb_has_help_and_usage() -> None:
    for verb in set(VERBS.values()):
        assert verb.summary and verb.usage().startswith(verb.name)
