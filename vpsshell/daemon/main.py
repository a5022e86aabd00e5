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
from typing import TYPE_CHECKING

from vpsshell import __version__, paths

if TYPE_CHECKING:
    from vpsshell.daemon.config import DaemonConfig

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
    from vpsshell.checks import helper_trusted_uids
    from vpsshell.daemon.config import ConfigError, load_config
    from vpsshell.policy import load_policy_dir

    try:
        config = load_config(config_path)
        create_backend(config.backend, config.state_dir)
    except (ConfigError, BackendConfigError) as exc:
        print(f"vpsshelld: {exc}", file=sys.stderr)
        return 1
    policy = load_policy_dir(config.policy_dir, trusted_uids=helper_trusted_uids())
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


MAX_OPEN_FILES = 65536


def _raise_open_files_limit() -> None:
    """Up to the hard limit (at most ``MAX_OPEN_FILES``): a burst of tenants' connections is
    refused one by one, never by running out of descriptors, which would refuse everybody."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(config: DaemonConfig) -> int:
    from vpsshell.daemon import systemd
    from vpsshell.daemon.assembly import start_helper

    helper = await start_helper(config)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, helper.policy.reload_soon)
    watcher = asyncio.create_task(helper.policy.watch(config.policy_poll_seconds))
    systemd.notify("READY=1")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        systemd.notify("STOPPING=1")
        watcher.cancel()
        await helper.stop()
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
    _raise_open_files_limit()
    try:
        return asyncio.run(_serve(config))
    except (ConfigError, BackendConfigError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
