"""The client config's shell settings: documented keys, and never a reason not to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpsshell.shell.settings import DEFAULT_BANNER, ShellSettings, load_settings, parse_settings


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPSSHELL_CONFIG", str(tmp_path / "missing.toml"))
    settings, warnings = load_settings()
    assert settings == ShellSettings() and warnings == []
    assert settings.history and settings.motd and settings.banner == DEFAULT_BANNER


def test_every_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "vpsshell.toml"
    config.write_text(
        'socket = "/run/x.sock"\nhistory = false\nhistory_size = 50\n'
        'banner = "ACME\\nSupport: 555"\nmotd = false\nrefresh_seconds = 3\n'
    )
    monkeypatch.setenv("VPSSHELL_CONFIG", str(config))
    settings, warnings = load_settings()
    assert warnings == []
    assert (settings.history, settings.history_size, settings.motd) == (False, 50, False)
    assert settings.banner == "ACME\nSupport: 555" and settings.refresh_seconds == 3.0


def test_bad_values_keep_defaults_and_say_so() -> None:
    settings, warnings = parse_settings(
        {"history": "no", "refresh_seconds": 0.01, "motd": 1, "colour": True, "banner": 7}, "f"
    )
    assert settings.history is True and settings.motd is True
    assert settings.banner == DEFAULT_BANNER
    assert settings.refresh_seconds == 0.5  # clamped, not refused
    assert len(warnings) == 4 and any("unknown key 'colour'" in w for w in warnings)


def test_a_broken_file_still_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "vpsshell.toml"
    config.write_bytes(b"history = \xff[[")
    monkeypatch.setenv("VPSSHELL_CONFIG", str(config))
    settings, warnings = load_settings()
    assert settings == ShellSettings() and len(warnings) == 1
