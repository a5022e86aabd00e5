"""The admin-side man pages: lint-clean roff, and nothing the programs accept left undocumented.

Each page is rendered with groff to plain text; the argparse parsers of ``vpsshelld`` and
``vpsshell-admin`` are walked, and every command path and option string must appear in its
page. vpsshell-policy(5) must list every action and spell out each built-in set exactly as the
engine defines it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vpsshell.admin.main import build_parser
from vpsshell.daemon.main import _parser as daemon_parser
from vpsshell.policy import ACTIONS, BUILTIN_ACTION_SETS

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = ["vpsshelld.8", "vpsshell-admin.8", "vpsshell-policy.5"]

pytestmark = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")


def render(page: str) -> str:
    """The page as plain text with runs of white space collapsed (no line-break artefacts)."""
    done = subprocess.run(
        ["groff", "-man", "-Tascii", "-P-cbou", str(MAN / page)],
        capture_output=True,
        text=True,
        check=True,
    )
    return " ".join(done.stdout.split())


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], list[str]]]:
    """(command path, option strings) for the parser and every subparser below it."""
    found = [(path, [s for a in parser._actions for s in a.option_strings])]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += walk(child, (*path, name))
    return found


def mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("page", PAGES)
def test_page_is_lint_clean(page: str) -> None:
    done = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN / page)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("page", "parser"),
    [("vpsshell-admin.8", build_parser()), ("vpsshelld.8", daemon_parser())],
    ids=["vpsshell-admin", "vpsshelld"],
)
def test_every_command_and_option_is_documented(page: str, parser: argparse.ArgumentParser) -> None:
    text = render(page)
    missing = []
    for path, options in walk(parser):
        if path and not mentions(text, " ".join(path)):
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {o}".strip() for o in options if not mentions(text, o)]
    assert missing == [], f"{page} does not mention: {missing}"


def test_policy_page_lists_every_action() -> None:
    text = render("vpsshell-policy.5")
    section = text.split(" ACTIONS ", 1)[1].split("BUILT-IN SETS", 1)[0]
    assert [a for a in ACTIONS if not mentions(section, a)] == []


def test_policy_page_spells_out_each_builtin_set() -> None:
    text = render("vpsshell-policy.5")
    for name, members in BUILTIN_ACTION_SETS.items():
        match = re.search(rf"@{name} = ([a-z@ ]+?)(?= @\w+ =| @all is|$)", text)
        assert match, f"@{name} is not defined in vpsshell-policy.5"
        listed: set[str] = set()
        for word in match.group(1).split():
            listed |= BUILTIN_ACTION_SETS[word[1:]] if word.startswith("@") else {word}
        assert listed == members, f"@{name}: page says {sorted(listed)}"


def test_every_helper_config_key_and_limit_is_in_vpsshelld_8_with_its_default() -> None:
    from vpsshell.daemon.config import DaemonConfig, Limits

    text = render("vpsshelld.8")
    missing = [
        f"{name} = {default:g}" if isinstance(default, float) else f"{name} = {default}"
        for name, default in vars(Limits()).items()
    ]
    missing = [line for line in missing if line not in text]
    keys = [name for name in DaemonConfig.__dataclass_fields__ if name != "source"]
    missing += [name for name in keys if name not in text]
    assert missing == []
