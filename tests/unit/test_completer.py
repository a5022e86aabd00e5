"""Completion from the registry: verbs, options, the caller's domains, nothing unsafe."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from vpsshell.shell.commands import ORDER, VERBS
from vpsshell.shell.completer import ShellCompleter

OWN = ["web1", "web2", "db1"]
HOSTILE = ["evil\x1b]0;pwned\x07", "rtl\u202eexe", "[bold]x[/bold]", "-rf", "a b"]


def complete(line: str, names: list[str] | None = None) -> list[str]:
    completer = ShellCompleter(VERBS, lambda: names if names is not None else OWN)
    document = Document(line, len(line))
    return [c.text for c in completer.get_completions(document, CompleteEvent(True))]


def test_empty_line_offers_every_verb_once_without_aliases() -> None:
    assert complete("") == ORDER
    assert "boot" not in complete("") and "destroy" not in complete("")


def test_verb_prefix_includes_aliases_once_typed() -> None:
    assert complete("st") == ["status", "start"]
    assert complete("bo") == ["boot"]
    assert complete("qu") == ["quit"]


def test_domains_after_a_verb_that_takes_one() -> None:
    assert complete("start ") == ["db1", "web1", "web2"]
    assert complete("boot w") == ["web1", "web2"]
    assert complete("use web2") == ["web2"]
    assert complete("status --json ") == ["db1", "web1", "web2"]


def test_nothing_after_the_domain_or_for_verbs_without_one() -> None:
    assert complete("start web1 ") == []
    assert complete("list ") == []
    assert complete("whoami w") == []
    assert complete("frobnicate ") == []


def test_options_of_the_verb_not_given_yet() -> None:
    assert complete("shutdown web1 --") == ["--wait", "--force"]
    assert complete("shutdown web1 --w") == ["--wait"]
    assert complete("shutdown web1 --force --") == ["--wait"]
    assert complete("list --") == ["--json"]
    assert complete("start web1 --") == []


def test_help_completes_verbs() -> None:
    assert complete("help res") == ["reset"]
    assert complete("help rec") == ["recordings", "recording"]
    assert complete("help reboot ") == []


def test_only_names_the_grammar_accepts_are_offered() -> None:
    offered = complete("start ", OWN + HOSTILE)
    assert offered == ["db1", "web1", "web2"]


def test_a_line_with_a_rejected_character_gets_no_completion() -> None:
    assert complete("start\x1b ") == []
    assert complete("st\u00e4") == []
