"""The history file: private to its user, one valid command per line, bounded."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from prompt_toolkit.history import InMemoryHistory

from vpsshell.shell.history import HISTORY_NAME, PrivateFileHistory, build_history


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_private_and_only_valid_lines_stored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    history = build_history(True, 100)
    assert isinstance(history, PrivateFileHistory)
    for line in ("status web1", "list\nstart web2", "start web1\x1b[A", "  ", "whoami"):
        history.append_string(line)
    path = tmp_path / HISTORY_NAME
    assert mode(path) == 0o600
    assert path.read_text() == "status web1\nwhoami\n"


def test_loaded_newest_first_and_trimmed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / HISTORY_NAME
    path.write_text("".join(f"status web{i}\n" for i in range(10)) + "bad\x07line\n")
    path.chmod(0o644)
    history = PrivateFileHistory.open(str(path), 3)
    assert history is not None
    assert list(history.load_history_strings()) == ["status web9", "status web8", "status web7"]
    assert mode(path) == 0o600  # an old readable file is made private
    assert path.read_text() == "status web7\nstatus web8\nstatus web9\n"


def test_switched_off_or_unsafe_means_memory_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert isinstance(build_history(False, 100), InMemoryHistory)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "elsewhere").write_text("")
    os.symlink(tmp_path / "elsewhere", tmp_path / HISTORY_NAME)
    assert isinstance(build_history(True, 100), InMemoryHistory)  # never follows a symlink
    monkeypatch.setenv("HOME", "relative/home")
    assert isinstance(build_history(True, 100), InMemoryHistory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_file_owned_by_someone_else_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / HISTORY_NAME
    path.write_text("")
    os.chown(path, 65534, 65534)
    assert isinstance(build_history(True, 100), InMemoryHistory)
