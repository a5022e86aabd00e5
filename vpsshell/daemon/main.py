"""``vpsshelld``: command line, start-up, signals and shutdown of the helper.

``--check-config`` validates the config, the backend table and the policy without binding any
socket. ``--foreground`` keeps the process attached and logging to stderr (as under systemd);
otherwise it detaches and logs to syslog, and the command returns only once the helper listens
(status 0) or has failed to start (status 1, the reason on stderr): a helper that cannot start
is never silent. Either way the helper holds its pid file (``pid_file``) while it runs.
SIGTERM/SIGINT stop it cleanly; SIGHUP reloads the policy and reopens the audit log, SIGUSR1
only reopens the audit log (after logrotate moved it away).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import logging.handlers
import os
import signal
import stat
import sys
from collections.abc import Callable
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
    if not policy.rules:
        print(f"vpsshelld: warning: no rules in {config.policy_dir}: all denied", file=sys.stderr)
    return 0


STARTED = b"listening"  # what a detached helper says on its start-up pipe once it serves
SYSLOG_SOCKET = "/dev/log"  # syslog's socket; on systemd hosts the journal listens on it
FALLBACK_LOG_NAME = "vpsshelld.log"  # beside the audit log, when there is no syslog


def _detach() -> int:
    """Detach from the terminal and session. The command that was run waits on a pipe and
    exits with the helper's start-up outcome (``_start_outcome``); in the helper, this
    returns the pipe's write end. stderr stays the command's until the helper listens, so
    whatever stops the start-up is shown where it was started."""
    read_end, write_end = os.pipe()
    if os.fork():
        os.close(write_end)
        raise SystemExit(_start_outcome(read_end))
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    return write_end


def _start_outcome(read_end: int) -> int:
    said = b""
    while chunk := os.read(read_end, 64):
        said += chunk
    if said == STARTED:
        return 0
    # the helper has already logged why, to this stderr and to syslog
    print("vpsshelld: the helper did not start", file=sys.stderr)
    return 1


def _started_detached(write_end: int) -> None:
    """The detached helper listens: release the command that started it, and from now on
    log only to syslog (its stderr goes to /dev/null)."""
    os.write(write_end, STARTED)
    os.close(write_end)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            root.removeHandler(handler)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _log_to_system(config: DaemonConfig) -> None:
    """A detached helper logs to syslog (/dev/log, which the journal serves on systemd
    hosts); without one, to ``vpsshelld.log`` beside the audit log, reopened by itself when
    logrotate moves it (``WatchedFileHandler``)."""
    handler: logging.Handler
    try:
        if not stat.S_ISSOCK(os.stat(SYSLOG_SOCKET).st_mode):
            raise FileNotFoundError(SYSLOG_SOCKET)
        syslog = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        syslog.ident = f"vpsshelld[{os.getpid()}]: "
        handler = syslog
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    except OSError:
        directory = os.path.dirname(config.audit_log)
        os.makedirs(directory, mode=0o750, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(
            os.path.join(directory, FALLBACK_LOG_NAME), delay=False
        )
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s vpsshelld[%(process)d]: %(levelname)s %(name)s: %(message)s"
            )
        )
    logging.getLogger().addHandler(handler)


MAX_OPEN_FILES = 65536


def _raise_open_files_limit() -> None:
    """Up to the hard limit (at most ``MAX_OPEN_FILES``): a burst of tenants' connections is
    refused one by one, never by running out of descriptors, which would refuse everybody."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(config: DaemonConfig, started: Callable[[], None] | None) -> int:
    from vpsshell.daemon import systemd
    from vpsshell.daemon.assembly import start_helper

    helper = await start_helper(config)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload_and_reopen() -> None:
        # HUP is what admins send by habit after rotating logs, and what ExecReload sends:
        # both want the policy read again and the audit log reopened
        helper.policy.reload_soon()
        helper.audit.reopen()

    loop.add_signal_handler(signal.SIGHUP, reload_and_reopen)
    loop.add_signal_handler(signal.SIGUSR1, helper.audit.reopen)  # logrotate's postrotate
    watcher = asyncio.create_task(helper.policy.watch(config.policy_poll_seconds))
    systemd.notify("READY=1")
    if started is not None:
        started()
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
    from vpsshell.daemon.pid_file import PidFile

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    started: Callable[[], None] | None = None
    if not args.foreground:
        start_pipe = _detach()
        _log_to_system(config)
        started = functools.partial(_started_detached, start_pipe)
    _raise_open_files_limit()
    pid_file = PidFile(config.pid_file)
    try:
        pid_file.acquire()  # before anything else: a second helper touches nothing
        return asyncio.run(_serve(config, started))
    except (ConfigError, BackendConfigError, RuntimeError, OSError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        pid_file.release()


if __name__ == "__main__":
    sys.exit(main())
