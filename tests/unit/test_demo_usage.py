"""``vpsshell-demo``'s arguments: ``--help`` is an answer (status 0, on stdout), anything it
does not take is a usage error (64, on stderr). Neither starts a helper."""

from __future__ import annotations

import pytest

from vpsshell.demo import USAGE, main


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_says_what_the_demo_is_and_exits_0(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(USAGE + "\n") and "vpsshell-demo -c 'list'" in out and err == ""


@pytest.mark.parametrize("argv", [["--bogus"], ["-c"], ["list"], ["-c", "list", "extra"]])
def test_other_arguments_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 64
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(USAGE + "\n") and "--help" in err
