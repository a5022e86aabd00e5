"""``vpsshelld``: command line, start-up, signals and shutdown of the helper.

``--check-config`` validates the config, the backend table and the policy without binding any
socket. ``--foreground`` keeps the process attached (as under systemd); otherwise it detaches.
SIGTERM/SIGINT stop it cleanly, SIGHUP reloads the policy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from vpsshell import __version__, paths

if TYPE_CHECKING:
    from vpsshell.daemon.config import DaemonConfig
    from vpsshell.policy import Policy

log = logging.getLogger("vpsshell")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpsshelld", description="vpsshell's privileged helper (see vpsshelld(8))"
    )
    parser.add_argument("--config", default=paths.DAEMON_CONFIG, help="config file (TOML)")
    parser.add_argument("--foreground", action="store_true", help="do not detach")
    parser.add_argument(
        "--check-config", action="store_true", help="validate config and policy, then exit"
    )
    parser.add_argument("--version", action="version", version=f"vpsshelld {__version__}")
    return parser


def _check(config_path: str) -> int:
    from vpsshell.backends import BackendConfigError, create_backend
    from vpsshell.daemon.config import ConfigError, load_config
    from vpsshell.policy import load_policy_dir

    try:
        config = load_config(config_path)
        create_backend(config.backend, config.state_dir)
    except (ConfigError, BackendConfigError) as exc:
        print(f"vpsshelld: {exc}", file=sys.stderr)
        return 1
    policy = load_policy_dir(config.policy_dir, trusted_uids=frozenset({0, os.geteuid()}))
    for error in policy.errors:
        print(f"{os.path.join(config.policy_dir, '')}{error}", file=sys.stderr)
    if policy.errors:
        print("vpsshelld: the policy is broken: every request would be denied", file=sys.stderr)
        return 1
    print(f"{config_path}: OK ({len(policy.rules)} policy rule(s))")
    return 0


def _detach() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


async def _serve(config: DaemonConfig) -> int:
    from vpsshell.backends import create_backend
    from vpsshell.daemon import systemd
    from vpsshell.daemon.admin_api import AdminApi
    from vpsshell.daemon.api import TenantApi
    from vpsshell.daemon.audit import AuditLog
    from vpsshell.daemon.consoles import Attachment, ConsoleManager
    from vpsshell.daemon.peer import Caller
    from vpsshell.daemon.policy_state import PolicyState
    from vpsshell.daemon.server import Listener, bind_socket

    audit = AuditLog(config.audit_log)
    audit.open()
    backend = create_backend(config.backend, config.state_dir)
    await backend.open()

    limits = config.limits

    def on_detach(attachment: Attachment, reason: str) -> None:
        audit.write(
            action="console-detach",
            decision="allow",
            result=reason,
            uid=attachment.caller.uid,
            user=attachment.caller.user,
            pid=attachment.caller.pid,
            domain=attachment.hub.name if attachment.hub else None,
            mode=attachment.mode,
            attachment=attachment.id,
            seconds=round(time.time() - attachment.since, 1),
        )

    consoles = ConsoleManager(
        backend,
        config.console_log_dir,
        ring_bytes=limits.console_ring_bytes,
        log_bytes=limits.console_log_bytes,
        log_files=limits.console_log_files,
        queue_bytes=limits.console_client_queue_bytes,
        on_detach=on_detach,
    )

    def on_reload(policy: Policy) -> None:
        errors = policy.errors
        audit.write(
            action="policy-reloaded",
            decision="admin",
            result="broken" if errors else "ok",
            message="; ".join(str(e) for e in errors)[:500] or None,
        )
        consoles.revoke(tenant_api.still_attached_allowed)

    policy = PolicyState(config.policy_dir)
    tenant_api = TenantApi(backend, policy, audit, limits, consoles, config.pam_service)

    async def admit(caller: Caller) -> str | None:
        if not config.pam_service:
            return None
        from vpsshell.daemon.pam_service import account_refusal

        try:
            return await asyncio.wait_for(
                asyncio.to_thread(account_refusal, caller.user, config.pam_service), timeout=30
            )
        except Exception as exc:  # PAM missing or hung: fail closed
            log.error("PAM account check for %s failed: %r", caller.user, exc)
            return "the account check failed"

    policy.on_reload = on_reload
    policy.reload()
    await consoles.start_all()
    admin_api = AdminApi(backend, policy, audit, consoles)
    inherited = systemd.activated_socket(config.socket)
    tenant = Listener(
        "tenant",
        inherited or bind_socket(config.socket, 0o660, config.socket_group),
        tenant_api.handle,
        config.limits,
        audit,
        admit=admit,
        owns_path=inherited is None,  # systemd's socket unit owns an activated socket
    )
    admin = Listener(
        "admin",
        bind_socket(config.admin_socket, 0o600, None),
        admin_api.handle,
        config.limits,
        audit,
        allowed_uids=frozenset({0, os.geteuid()}),
    )
    await tenant.start()
    await admin.start()
    log.info("vpsshelld %s listening on %s (backend %s)", __version__, config.socket, backend.kind)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, policy.reload)
    watcher = asyncio.create_task(policy.watch(config.policy_poll_seconds))
    systemd.notify("READY=1")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        systemd.notify("STOPPING=1")
        watcher.cancel()
        await tenant.stop()
        await admin.stop()
        await consoles.stop()
        await backend.close()
        audit.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="vpsshelld: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.check_config:
        return _check(args.config)
    from vpsshell.backends import BackendConfigError
    from vpsshell.daemon.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    if not args.foreground:
        _detach()
    try:
        return asyncio.run(_serve(config))
    except (ConfigError, BackendConfigError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
