"""vpsshell(1): lint-clean roff that documents every verb, alias and option in the registry,
every exit code, every client config key, and the keys that are switched off."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vpsshell.errors import ExitCode
from vpsshell.shell.commands import VERBS
from vpsshell.shell.settings import ShellSettings

PAGE = Path(__file__).resolve().parents[2] / "man" / "vpsshell.1"

pytestmark = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")


def section(name: str) -> str:
    """One section of the page rendered as plain text, white space collapsed."""
    done = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", str(PAGE)], capture_output=True, text=True
    )
    text = " ".join(done.stdout.split())
    names = "NAME|SYNOPSIS|DESCRIPTION|COMMANDS|INTERACTIVE USE|KEYS|EXIT STATUS|SIGNALS"
    names += "|ENVIRONMENT"
    parts = re.split(rf" ({names}|FILES|EXAMPLES|SEE ALSO) ", f" {text} ")
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    return sections[name]


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


def test_page_is_lint_clean() -> None:
    done = subprocess.run(["groff", "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_every_verb_alias_and_option_in_the_registry_is_documented() -> None:
    commands = section("COMMANDS")
    missing = [word for word in VERBS if not mentions(commands, word)]
    for verb in set(VERBS.values()):
        usage = f"{verb.name} " + " ".join(
            f"--{o.name}" for o in verb.options if not mentions(commands, f"--{o.name}")
        )
        if usage.strip() != verb.name:
            missing.append(usage)
    assert missing == [], f"vpsshell.1 COMMANDS does not mention: {missing}"


def test_every_exit_code_is_documented() -> None:
    status = section("EXIT STATUS")
    assert [int(c) for c in ExitCode if not mentions(status, str(int(c)))] == []


def test_every_client_config_key_is_documented() -> None:
    files = section("FILES")
    keys = [name for name in ShellSettings.__dataclass_fields__ if name != "source"]
    assert [key for key in [*keys, "socket"] if not mentions(files, f"{key} =")] == []


def test_keys_that_do_nothing_are_named() -> None:
    keys = section("KEYS")
    for key in ("Ctrl-Z", "Ctrl-Q", "Ctrl-V", "Ctrl-X Ctrl-E", "Alt-!", "Ctrl-C", "Ctrl-D", "Tab"):
        assert key in keys, key
