"""The one vocabulary for untrusted values (``vpsshell.checks``): the patterns at their edges,
and the trusted-file rule on real files, links and directories of this test's own user."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vpsshell import checks

ME = frozenset({os.geteuid()})


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("web1", True),
        ("a", True),
        ("9", True),
        ("Web_1.example:2-x", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("-web", False),
        (".web", False),
        ("_web", False),
        ("web 1", False),
        ("web1\n", False),
        ("web/1", False),
        ("wéb", False),
        (7, False),
        (None, False),
        (b"web1", False),
    ],
)
def test_domain_names(value: object, accepted: bool) -> None:
    assert checks.is_domain_name(value) is accepted


def test_an_offered_domain_name_is_never_all_digits() -> None:
    assert checks.is_offered_domain_name("web1")
    assert not checks.is_offered_domain_name("12")  # a numeric domain id
    assert not checks.is_offered_domain_name("-x")


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("0e7d0a3c-5b1f-5c55-9a43-78656e766d73", True),
        ("0E7D0A3C-5B1F-5C55-9A43-78656E766D73", False),  # backends give lowercase
        ("0e7d0a3c5b1f5c559a4378656e766d73", False),
        ("0e7d0a3c-5b1f-5c55-9a43-78656e766d73\n", False),
        ("../../etc/passwd", False),
        (None, False),
    ],
)
def test_uuids(value: object, accepted: bool) -> None:
    assert checks.is_uuid(value) is accepted


@pytest.mark.parametrize("key", [*"0123456789abcdefghijklmnopqrstuvwxyz"])
def test_every_sysrq_key(key: str) -> None:
    assert checks.is_sysrq_key(key)


@pytest.mark.parametrize("key", ["", "A", "ab", "\n", "٣", " ", "-", 1, None])
def test_what_is_not_a_sysrq_key(key: object) -> None:
    assert not checks.is_sysrq_key(key)


def test_host_labels() -> None:
    assert checks.is_host_label("kvm-01.example.net")
    assert checks.is_host_label("h" * 253)
    assert not checks.is_host_label("h" * 254)
    assert not checks.is_host_label("-h")
    assert not checks.is_host_label("")


# -- the trusted-file rule -----------------------------------------------------------------


def fake_stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 10, 0, 0, 0))


def test_a_file_of_a_trusted_owner_that_only_it_may_write_is_trusted(tmp_path: Path) -> None:
    path = tmp_path / "10-a"
    path.write_text("x")
    for mode in (0o644, 0o600, 0o755, 0o444):
        os.chmod(path, mode)
        assert checks.trusted_file_problem(os.lstat(path), ME) is None
    os.chmod(tmp_path, 0o755)
    assert checks.trusted_file_problem(os.lstat(tmp_path), ME, directory=True) is None


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o775, 0o777])
def test_a_file_others_may_write_is_not_trusted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "10-a"
    path.write_text("x")
    os.chmod(path, mode)
    problem = checks.trusted_file_problem(os.lstat(path), ME)
    assert problem == f"group- or world-writable (mode {mode:04o}); run chmod go-w"


def test_a_directory_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o1777)  # sticky: still anyone may add a file
    problem = checks.trusted_file_problem(os.lstat(tmp_path), ME, directory=True)
    assert problem is not None and "world-writable (mode 1777)" in problem


def test_a_file_of_another_user_is_not_trusted() -> None:
    stranger = max(ME) + 1
    problem = checks.trusted_file_problem(fake_stat(stat.S_IFREG | 0o644, stranger), ME)
    assert problem == f"owned by uid {stranger}, not by a trusted uid ({os.geteuid()})"
    assert checks.trusted_file_problem(fake_stat(stat.S_IFREG | 0o644, 0), frozenset({0})) is None


def test_a_symbolic_link_is_never_trusted_even_to_a_trusted_file(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text("x")
    os.chmod(target, 0o644)
    link = tmp_path / "10-link"
    link.symlink_to(target)
    assert checks.trusted_file_problem(os.lstat(link), ME) == "a symbolic link (refused)"
    assert checks.trusted_file_problem(os.lstat(link), ME, directory=True) is not None


def test_the_kind_must_be_what_the_rule_asks_for(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    assert checks.trusted_file_problem(os.lstat(tmp_path), ME) == "not a regular file"
    assert checks.trusted_file_problem(os.lstat(fifo), ME) == "not a regular file"
    regular = tmp_path / "file"
    regular.write_text("x")
    assert checks.trusted_file_problem(os.lstat(regular), ME, directory=True) == ("not a directory")


def test_the_helper_trusts_root_and_itself() -> None:
    assert checks.helper_trusted_uids() == frozenset({0, os.geteuid()})
