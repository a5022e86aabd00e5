"""``help`` and ``help VERB`` as a tenant sees them, in both modes, against vpsshell(1).

Every line goes through ``session.execute_line`` (what ``vpsshell -c`` and the interactive
shell both run) into a captured terminal; ``help`` asks the helper nothing, so no helper runs.
Each verb's usage line must be a command heading of the man page's COMMANDS section, word for
word, and the page must give the same aliases and say which verbs are interactive only.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vpsshell.errors import UsageError
from vpsshell.shell.commands import ORDER, VERBS
from vpsshell.shell.environment import Environment
from vpsshell.shell.render import CLEAR_SCREEN
from vpsshell.shell.session import Session, execute_line

PAGE = Path(__file__).resolve().parents[2] / "man" / "vpsshell.1"
MODES = pytest.mark.parametrize("interactive", [False, True], ids=["-c", "interactive"])


def terminal(*, tty: bool = False) -> Environment:
    return Environment(io.StringIO(), io.StringIO(), io.StringIO(), tty, tty, tty, colour=False)


def shown(line: str, *, interactive: bool, tty: bool = False) -> str:
    """What the tenant sees for ``line``; the session has no helper to reach."""
    session = Session("/nonexistent/vpsshelld.sock", terminal(tty=tty), interactive=interactive)
    code, _ = execute_line(line, session)
    assert code == 0
    return session.env.stdout.getvalue()  # type: ignore[attr-defined, no-any-return]


def man_commands() -> dict[str, str]:
    """Usage heading -> its paragraph, from the COMMANDS section rendered one line per
    heading (a very long line length, so groff never wraps or justifies one)."""
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian: groff-base)")
    done = subprocess.run(
        ["groff", "-man", "-Tascii", "-rLL=1000n", "-P-cbou", str(PAGE)],
        capture_output=True,
        text=True,
        check=True,
    )
    section = done.stdout.split("\nCOMMANDS\n", 1)[1].split("\nINTERACTIVE USE\n", 1)[0]
    entries: dict[str, str] = {}
    heading = None
    for line in section.splitlines():
        # a tag of .TP, a verb and its arguments; a short one has its paragraph on its line
        tag = re.match(r" {7}([a-z]+(?: \S+)*)(?: {2,}(.*))?$", line)
        if tag:
            heading = tag.group(1)
            entries[heading] = tag.group(2) or ""
        elif heading is not None:
            entries[heading] += " " + line.strip()
    return entries


@MODES
@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_for_a_verb_is_lines_not_escapes(verb: str, interactive: bool) -> None:
    text = shown(f"help {verb}", interactive=interactive)
    spec = VERBS[verb]
    lines = text.splitlines()
    assert "\\n" not in text and text.endswith("\n")
    assert lines[:2] == [f"usage: {spec.usage()}", f"  {spec.summary}"]
    expected_rest = [f"  also: {', '.join(spec.aliases)}"] if spec.aliases else []
    expected_rest += [f"  --{option.name}: {option.help}" for option in spec.options]
    if spec.interactive_only:
        expected_rest.append("  interactive only (not with vpsshell -c)")
    assert lines[2:] == expected_rest


@MODES
def test_help_lists_every_verb_of_the_mode_with_its_aliases(interactive: bool) -> None:
    text = shown("help", interactive=interactive)
    assert "\\n" not in text
    for name in ORDER:
        verb = VERBS[name]
        listed = re.search(rf"^  {re.escape(verb.usage())}(\n)? +(.*)$", text, re.MULTILINE)
        assert listed is not None, name  # -c lists the login shell's verbs too (ssh host help)
        summary = listed.group(2)
        assert summary.startswith(verb.summary), name
        if verb.interactive_only and not interactive:
            assert summary.endswith(" (interactive shell only)"), name
            summary = summary.removesuffix(" (interactive shell only)")
        for alias in verb.aliases:
            assert summary.endswith(f"also {', '.join(verb.aliases)}"), alias


def test_quit_and_clear_are_in_the_interactive_help() -> None:
    text = shown("help", interactive=True)
    assert re.search(r"^  exit +leave the shell; also quit$", text, re.MULTILINE)
    assert re.search(r"^  clear +clear the screen \(Ctrl-L does too\)$", text, re.MULTILINE)


def test_every_verb_has_its_usage_as_a_heading_of_the_man_page() -> None:
    entries = man_commands()
    verbs = {VERBS[name] for name in ORDER}
    missing = sorted(verb.usage() for verb in verbs if verb.usage() not in entries)
    assert missing == [], f"vpsshell.1 COMMANDS has no heading for: {missing}"
    for verb in verbs:
        paragraph = entries[verb.usage()]
        for alias in verb.aliases:
            assert re.search(rf"\bAlso {alias}\b", paragraph), (verb.name, alias)
        assert ("Interactive only" in paragraph) == verb.interactive_only, verb.name


def test_clear_erases_a_terminal_and_leaves_a_pipe_alone() -> None:
    assert shown("clear", interactive=True, tty=True) == CLEAR_SCREEN
    assert shown("clear", interactive=True, tty=False) == ""
    with pytest.raises(UsageError, match="unknown command 'clear'"):
        shown("clear", interactive=False)
