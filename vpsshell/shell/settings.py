"""The interactive shell's settings from the client config, ``/etc/vpsshell/vpsshell.toml``.

Keys (all optional; see vpsshell(1), "FILES"): ``history``, ``history_size``, ``banner``,
``motd``, ``refresh_seconds``, ``console_escape`` (the default escape character of
``console``, spelled as its ``--escape`` is: ``~``, ``^A``, ``none``); ``socket`` is read by
``paths.client_socket_path``. A login shell
must never fail to start because of this file: an unreadable or invalid file, an unknown key
or a value of the wrong type leaves the defaults in place and says so in one line on stderr.
``VPSSHELL_CONFIG`` names another file (the shell is untrusted anyway: a tenant who points it
elsewhere changes only their own banner and history).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from vpsshell import paths
from vpsshell.shell.escapes import parse_escape

DEFAULT_BANNER = "vpsshell: type 'help' for commands, Tab to complete, 'exit' or Ctrl-D to leave."
MIN_REFRESH_SECONDS = 0.5
MAX_BANNER_CHARS = 4096
_KNOWN = (
    "socket",
    "history",
    "history_size",
    "banner",
    "motd",
    "refresh_seconds",
    "console_escape",
)


@dataclass(frozen=True)
class ShellSettings:
    """What an admin may tune about the interactive shell."""

    history: bool = True  # keep ~/.vpsshell_history (mode 0600)
    history_size: int = 1000  # lines kept in the file
    banner: str = DEFAULT_BANNER  # shown at login; "" shows none
    motd: bool = True  # one line with the caller's domains and their states at login
    refresh_seconds: float = 10.0  # toolbar poll without events (with them: 60 s at least)
    console_escape: str = "~"  # a console's escape character unless --escape says otherwise
    source: str = "<defaults>"


def config_path() -> str:
    return os.environ.get("VPSSHELL_CONFIG") or paths.CLIENT_CONFIG


def parse_settings(raw: dict[str, Any], source: str) -> tuple[ShellSettings, list[str]]:
    """Settings from a parsed TOML table, and one warning per key that was ignored."""
    warnings: list[str] = []
    values: dict[str, Any] = {}
    types = {field.name: field.type for field in fields(ShellSettings)}
    for key, value in raw.items():
        if key not in _KNOWN:
            warnings.append(f"{source}: unknown key {key!r} ignored")
            continue
        if key == "socket":
            continue
        wanted = types[key]
        if wanted == "bool":
            ok = isinstance(value, bool)
        elif wanted == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100_000
        elif wanted == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
            value = max(float(value), MIN_REFRESH_SECONDS) if ok else value
        elif key == "console_escape":
            ok = isinstance(value, str) and _is_escape(value)
        else:
            ok = isinstance(value, str) and len(value) <= MAX_BANNER_CHARS
        if not ok:
            warnings.append(f"{source}: {key} = {value!r} is not valid; using the default")
            continue
        values[key] = value
    return replace(ShellSettings(), source=source, **values), warnings


def _is_escape(text: str) -> bool:
    try:
        parse_escape(text)
    except ValueError:
        return False
    return True


def load_settings() -> tuple[ShellSettings, list[str]]:
    """The settings in effect, and warnings to show (the file is optional)."""
    path = config_path()
    try:
        with open(path, "rb") as fh:
            raw = fh.read(256 * 1024)
    except FileNotFoundError:
        return ShellSettings(), []
    except OSError as exc:
        return ShellSettings(), [f"{path}: {exc.strerror or exc}; using the defaults"]
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return ShellSettings(), [f"{path}: {exc}; using the defaults"]
    return parse_settings(table, path)
