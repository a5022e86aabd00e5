"""Loading and validating ``vpsshelld.toml`` into a ``DaemonConfig``.

The key names are part of the contract in design.md ("Files"): keys may be added, never renamed.
Unknown keys are errors, so a typo is caught by ``vpsshelld --check-config`` instead of silently
running with a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from vpsshell import paths


def _default_pid_file(socket_path: str) -> str:
    """The pid file lives in the run directory, the tenant socket's: a helper given a socket of
    its own (a test, a second helper on one host) gets a pid file of its own with it."""
    return os.path.join(os.path.dirname(socket_path), "vpsshelld.pid")


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names the key."""


@dataclass(frozen=True)
class Limits:
    """Every size, count and wait the helper enforces."""

    max_connections_per_user: int = 16
    max_connections: int = 512
    requests_per_minute: int = 600  # per user, token bucket
    action_timeout_seconds: float = 60.0  # one backend call
    shutdown_wait_default_seconds: int = 60
    shutdown_wait_max_seconds: int = 600
    idle_timeout_seconds: float = 3600.0  # a connection with no request for this long is closed
    password_attempts: int = 3  # confirm=password failures before a lockout
    password_lockout_seconds: float = 60.0
    password_check_threads: int = 2  # PAM password checks run on a pool of their own
    password_checks_in_flight: int = 32  # all users together; more are refused as busy
    connections_per_minute: int = 120  # new connections per user, token bucket
    connections_burst: int = 30
    account_check_threads: int = 4  # PAM account checks: a pool of their own, one per uid at a time
    account_recheck_seconds: float = 60.0  # connections and sessions are checked again this often
    session_recheck_seconds: float = 30.0  # consoles, followers re-authorized at least this often
    session_ping_seconds: float = 15.0  # a console session is pinged this often...
    session_ping_misses: int = 3  # ...and ended after this many pings without a word back
    console_ring_bytes: int = 64 * 1024  # scrollback kept per domain, for replay on attach
    console_replay_default_bytes: int = 16 * 1024
    console_log_bytes: int = 1024 * 1024  # per file; then rotated
    console_log_files: int = 4  # UUID.log plus UUID.log.1 .. .3
    console_client_queue_bytes: int = 1024 * 1024  # a viewer this far behind is dropped
    console_watchers_per_user: int = 4  # watch sessions of one user on one domain
    console_watchers_per_domain: int = 64  # all users together; the writer's slot is apart
    console_input_bytes_per_second: int = 16 * 1024  # what one user may type into a console...
    console_input_burst_bytes: int = 64 * 1024  # ...and at once (a paste); more waits, not lost
    console_log_bytes_per_hour: int = 1024 * 1024  # a log takes one file at once, then this
    console_log_keep_days: int = 30  # logs of a domain the helper has not seen this long go
    console_log_keep_domains: int = 1000  # logs of domains gone are kept for at most this many
    console_recording_bytes: int = 8 * 1024 * 1024  # one session's recording stops growing here
    console_recordings_bytes_per_domain: int = 64 * 1024 * 1024  # then its oldest are removed
    console_recordings_per_domain: int = 1000  # recordings kept per domain; then the oldest go
    console_recordings_bytes: int = 1024 * 1024 * 1024  # all together; then the oldest go
    console_recordings_keep_days: int = 30  # a recording older than this is removed
    events_history: int = 1000  # events kept in memory for ``events`` (all domains together)
    events_keep: int = 100000  # events kept in STATE_DIR/events.sqlite across restarts...
    events_keep_days: int = 90  # ...and for at most this many days
    events_follower_queue: int = 256  # an ``events --follow`` client this far behind is dropped
    hook_timeout_seconds: float = 10.0  # then the hook's process group is killed
    hook_queue_events: int = 1000  # lifecycle events waiting for the hooks; more are dropped
    hook_queue_tenant_events: int = 1000  # console-* and denied waiting (own queue, runs after)
    hook_queue_tenant_events_per_user: int = 100  # of those, caused by one user
    pre_hook_timeout_seconds: float = 10.0  # one pre-action hook; then it has timed out
    pre_hook_runs_at_once: int = 8  # actions in their pre-action hooks, all users together...
    pre_hook_runs_per_user: int = 2  # ...and of one user; more wait (as long as one hook may)
    keys_per_user: int = 20  # SSH public keys in one tenant's key file (``keys add``)
    key_line_bytes: int = 8192  # one public key line (an RSA-16384 key is some 2.8 KB)
    web_token_seconds: int = 60  # a console link (webconsole, console-url) is valid this long...
    web_token_max_seconds: int = 600  # ...and at most this long, whoever asks (--ttl)
    web_tokens_per_user: int = 8  # console links of one user not used or expired yet
    web_redeems_per_minute: int = 120  # console links redeemed by vpsshell-web (all together)
    web_sessions: int = 256  # browser consoles at once (connections of vpsshell-web)


@dataclass(frozen=True)
class DaemonConfig:
    socket: str = paths.SOCKET
    socket_group: str = paths.SOCKET_GROUP
    admin_socket: str = paths.ADMIN_SOCKET
    policy_dir: str = paths.POLICY_DIR
    audit_log: str = paths.AUDIT_LOG
    state_dir: str = paths.STATE_DIR
    console_log_dir: str = paths.CONSOLE_LOG_DIR
    hooks_dir: str = paths.HOOKS_DIR
    recordings_dir: str = ""  # "": "recordings" beside console_log_dir (see ``recordings_path``)
    console_recordings: bool = True  # False: console sessions are not recorded
    console_record_input: bool = True  # False: recordings leave out what the writer typed
    policy_poll_seconds: float = 1.0
    pam_service: str = "vpsshell"  # "" turns PAM off (the unprivileged demo does)
    audit_fail_open: bool = False  # True: act even when the audit log cannot be written
    audit_syslog: bool = False  # True: every audit record also goes to syslog (the journal)
    pid_file: str = _default_pid_file(paths.SOCKET)  # locked while the helper runs
    pre_hook_on_timeout: str = "refuse"  # or "allow": a pre-action hook that times out
    authorized_keys_dir: str = "/etc/vpsshell/authorized_keys"  # sshd's AuthorizedKeysFile dir
    keys_allow_removing_last: bool = False  # True: ``keys remove`` may take a tenant's last key
    totp_users_file: str = "/etc/vpsshell/totp/users.oath"  # pam_oath usersfile=, 0600
    web_console: bool = True  # False: no console links, no web socket
    web_socket: str = ""  # where vpsshell-web redeems console links ("": see web_socket_path)
    web_socket_user: str = "vpsshell-web"  # the only user (besides root) that may connect there
    web_url: str = ""  # vpsshell-web's page; a console link is this plus #TOKEN (web_link_url)
    keys_self_service: bool = True  # every tenant may manage their own keys unless denied
    limits: Limits = field(default_factory=Limits)
    backend: dict[str, Any] = field(default_factory=lambda: {"type": "sim"})
    source: str = "<defaults>"

    @property
    def recordings_path(self) -> str:
        """Where console recordings go: ``recordings_dir``, else ``recordings`` in the
        directory that holds ``console_log_dir`` (/var/log/vpsshell/recordings)."""
        if self.recordings_dir:
            return self.recordings_dir
        parent = os.path.dirname(self.console_log_dir.rstrip("/")) or "/"
        return os.path.join(parent, "recordings")

    @property
    def web_socket_path(self) -> str:
        """The web socket: ``web_socket``, else ``web.sock`` beside the tenant socket
        (/run/vpsshell/web.sock); "" with ``web_console`` off."""
        if not self.web_console:
            return ""
        return self.web_socket or os.path.join(os.path.dirname(self.socket), "web.sock")

    @property
    def web_link_url(self) -> str:
        """The page console links point at: ``web_url``, else vpsshell-web's default place on
        this host (https://FQDN:8443/); "" with ``web_console`` off."""
        if not self.web_console:
            return ""
        return self.web_url or paths.default_web_url()


_PATH_KEYS = (
    "socket",
    "socket_group",
    "admin_socket",
    "policy_dir",
    "audit_log",
    "state_dir",
    "console_log_dir",
    "hooks_dir",
    "recordings_dir",
    "pid_file",
    "web_socket",
    "web_socket_user",
    "authorized_keys_dir",
    "totp_users_file",
)
_BOOLEAN_KEYS = (
    "audit_fail_open",
    "console_recordings",
    "console_record_input",
    "audit_syslog",
    "keys_allow_removing_last",
    "keys_self_service",
    "web_console",
)


PRE_HOOK_ON_TIMEOUT = ("refuse", "allow")


def _number(table: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key}: {value} is outside {low}..{high}")
    return value


def _limits(table: dict[str, Any]) -> Limits:
    defaults = Limits()
    known = set(Limits.__dataclass_fields__)
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"limits: unknown key(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in known:
        default = getattr(defaults, name)
        high = 86400 * 7 if "seconds" in name else 1 << 30 if "bytes" in name else 100000
        number = _number(table, name, default, 1, high)
        values[name] = int(number) if isinstance(default, int) else float(number)
    return Limits(**values)


def _web_url(value: object, source: str) -> str:
    """The console page's URL: https (the web console is TLS only), no fragment (the token
    goes there), nothing a terminal or a log would show differently from what it is."""
    if not isinstance(value, str) or not value.startswith("https://") or len(value) > 512:
        raise ConfigError(f"{source}: web_url: expected an https:// URL")
    if "#" in value or not value.isprintable() or " " in value:
        raise ConfigError(f"{source}: web_url: no fragment, spaces or control characters")
    return value


def parse_config(data: dict[str, Any], source: str = "<string>") -> DaemonConfig:
    known = set(_PATH_KEYS) | {
        "backend",
        "limits",
        "policy_poll_seconds",
        "pam_service",
        "pre_hook_on_timeout",
        "web_url",
        *_BOOLEAN_KEYS,
    }
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{source}: unknown key(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {"source": source}
    for key in _PATH_KEYS:
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{source}: {key}: expected a non-empty string")
            if key not in ("socket_group", "web_socket_user") and not value.startswith("/"):
                raise ConfigError(f"{source}: {key}: expected an absolute path, got {value!r}")
            values[key] = value
    if "pam_service" in data:
        service = data["pam_service"]
        if not isinstance(service, str) or not all(c.isalnum() or c in "_.-" for c in service):
            raise ConfigError(f'{source}: pam_service: expected a PAM service name or ""')
        values["pam_service"] = service
    for key in _BOOLEAN_KEYS:
        if key in data:
            if not isinstance(data[key], bool):
                raise ConfigError(f"{source}: {key}: expected true or false")
            values[key] = data[key]
    if "pre_hook_on_timeout" in data:
        if data["pre_hook_on_timeout"] not in PRE_HOOK_ON_TIMEOUT:
            raise ConfigError(f'{source}: pre_hook_on_timeout: expected "refuse" or "allow"')
        values["pre_hook_on_timeout"] = data["pre_hook_on_timeout"]
    if "web_url" in data:
        values["web_url"] = _web_url(data["web_url"], source)
    limits = data.get("limits", {})
    backend = data.get("backend", {"type": "sim"})
    if not isinstance(limits, dict):
        raise ConfigError(f"{source}: limits: expected a table")
    if not isinstance(backend, dict):
        raise ConfigError(f"{source}: backend: expected a table")
    try:
        values["limits"] = _limits(limits)
        values["policy_poll_seconds"] = float(_number(data, "policy_poll_seconds", 1.0, 0.1, 3600))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    values["backend"] = backend
    if "pid_file" not in data:
        values["pid_file"] = _default_pid_file(values.get("socket", paths.SOCKET))
    return DaemonConfig(**values)


def load_config(path: str) -> DaemonConfig:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(1024 * 1024 + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if len(raw) > 1024 * 1024:
        raise ConfigError(f"{path}: larger than 1 MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path)
