"""Every default path of vpsshell, in one place.

The helper's paths can all be overridden in its config file; the shell's only setting is the
socket path. Nothing here reads the environment except ``client_socket_path`` (the shell is
untrusted anyway: pointing it elsewhere gains a tenant nothing).
"""

from __future__ import annotations

import os

DAEMON_CONFIG = "/etc/vpsshell/vpsshelld.toml"
CLIENT_CONFIG = "/etc/vpsshell/vpsshell.toml"
SOCKET = "/run/vpsshell/vpsshelld.sock"
ADMIN_SOCKET = "/run/vpsshell/admin.sock"
SOCKET_GROUP = "vpsshell"
POLICY_DIR = "/etc/vpsshell/policy.d"
HOOKS_DIR = "/etc/vpsshell/hooks.d"
AUDIT_LOG = "/var/log/vpsshell/audit.jsonl"
STATE_DIR = "/var/lib/vpsshell"
CONSOLE_LOG_DIR = "/var/log/vpsshell/console"
WEB_PORT = 8443  # vpsshell-web's port unless its config says otherwise


def default_web_url(port: int = WEB_PORT) -> str:
    """Where vpsshell-web's page is unless configured: this host's name on ``port``; both the
    helper's links (``web_url``) and the service's allowed origin (``public_url``) use it."""
    import socket

    return f"https://{socket.getfqdn()}:{port}/"


def client_socket_path() -> str:
    """``VPSSHELL_SOCKET``, else ``socket`` in the client config (``VPSSHELL_CONFIG`` or
    /etc/vpsshell/vpsshell.toml), else the default."""
    from_env = os.environ.get("VPSSHELL_SOCKET")
    if from_env:
        return from_env
    try:
        with open(os.environ.get("VPSSHELL_CONFIG") or CLIENT_CONFIG, "rb") as fh:
            raw = fh.read(64 * 1024)
    except OSError:
        return SOCKET
    import tomllib

    try:
        value = tomllib.loads(raw.decode("utf-8")).get("socket")
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return SOCKET
    return value if isinstance(value, str) and value else SOCKET
