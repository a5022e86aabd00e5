"""vpsshell-web(8): lint-clean roff, and every command, option and config key of vpsshell-web in
it, each config key with its default."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
from test_man_pages import MAN, mentions, render, walk

from vpsshell.web.config import WebConfig
from vpsshell.web.main import _parser

pytestmark = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")


def test_page_is_lint_clean() -> None:
    done = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN / "vpsshell-web.8")], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_every_command_option_and_config_key_is_documented() -> None:
    text = render("vpsshell-web.8")
    missing = []
    for path, options in walk(_parser()):
        if path and not mentions(text, " ".join(path)):
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {o}".strip() for o in options if not mentions(text, o)]
    for field in dataclasses.fields(WebConfig):
        if field.name == "source":
            continue
        default = getattr(WebConfig(), field.name)
        shown = "[]" if default == () else f'"{default}"' if isinstance(default, str) else default
        if f"{field.name} = {shown}" not in text and field.name != "public_url":
            missing.append(f"{field.name} = {shown}")
    assert missing == []
