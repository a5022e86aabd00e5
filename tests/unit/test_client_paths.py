"""Where the shell looks for the helper's socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpsshell import paths


def test_socket_from_env_then_config_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "vpsshell.toml"
    config.write_text('socket = "/srv/vpsshell.sock"\n')
    monkeypatch.delenv("VPSSHELL_SOCKET", raising=False)
    monkeypatch.setenv("VPSSHELL_CONFIG", str(config))
    assert paths.client_socket_path() == "/srv/vpsshell.sock"
    monkeypatch.setenv("VPSSHELL_SOCKET", "/tmp/other.sock")
    assert paths.client_socket_path() == "/tmp/other.sock"
    monkeypatch.delenv("VPSSHELL_SOCKET")
    config.write_text("socket = [1, 2]\n")  # malformed: the default, never a crash
    assert paths.client_socket_path() == paths.SOCKET
    monkeypatch.setenv("VPSSHELL_CONFIG", str(tmp_path / "missing.toml"))
    assert paths.client_socket_path() == paths.SOCKET
