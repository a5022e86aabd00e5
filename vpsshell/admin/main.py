"""``vpsshell-admin``: command line of the administrator's tools; one place for exit statuses.

Every subcommand reads the helper's config (``--config``, before or after the subcommand) to
find the policy directory, the admin socket and the audit log. Policy commands work on the
files directly (see policy_read.py, edit.py, grants.py) and ask the running helper to reload
after a change; ``audit`` reads the log; ``install`` puts the system files in place. This
module parses arguments and maps failures to exit statuses; it never prints a traceback for an
expected failure.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from vpsshell import __version__, paths
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.identities import Identities

Handler = Callable[[AdminContext, argparse.Namespace, Identities], int]

EPILOG = "See vpsshell-admin(8) and vpsshell-policy(5)."


def _expires(value: str) -> str:
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    if len(value) != 10:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)")
    return value


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _seconds(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 3600:
        raise argparse.ArgumentTypeError("must be 1 to 3600 seconds")
    return number


def _policy_dir(ctx: AdminContext, args: argparse.Namespace) -> str:
    return getattr(args, "policy_dir", None) or ctx.config.policy_dir


# -- handlers: argument namespace -> the command modules -------------------------------------


def _check(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.backend_domains import planned_names
    from vpsshell.admin.policy_read import cmd_check

    planned = planned_names(args.planned)
    return cmd_check(ctx, _policy_dir(ctx, args), args.strict, ids, planned)


def _explain(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.policy_read import cmd_explain

    return cmd_explain(ctx, _policy_dir(ctx, args), args.user, args.action, args.domain, ids)


def _who(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.policy_read import cmd_who

    return cmd_who(ctx, _policy_dir(ctx, args), args.domain, args.json, ids)


def _list(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.policy_read import cmd_list

    return cmd_list(ctx, _policy_dir(ctx, args), args.user, args.json, ids)


def _test(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.policy_read import cmd_test

    return cmd_test(ctx, _policy_dir(ctx, args), args.file, args.verbose, ids)


def _edit(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.edit import cmd_edit
    from vpsshell.admin.policydir import DEFAULT_EDIT_FILE

    return cmd_edit(ctx, args.file or DEFAULT_EDIT_FILE, ids, args.yes)


def _grant(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.grants import Request, cmd_grant

    request = Request(args.subject, args.actions, tuple(args.domains))
    return cmd_grant(
        ctx, request, args.expires, args.reason, args.confirm, args.dry_run, ids, args.planned
    )


def _revoke(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.grants import Request, cmd_revoke

    request = Request(args.subject, args.actions, tuple(args.domains))
    return cmd_revoke(ctx, request, args.dry_run, ids)


def _audit(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.auditlog import cmd_audit

    return cmd_audit(ctx, args.follow, args.user, args.domain, args.json, args.lines)


def _reload(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.helper import cmd_reload

    return cmd_reload(ctx)


def _sessions(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.sessions import cmd_sessions

    return cmd_sessions(ctx, args.json)


def _kick(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.sessions import cmd_kick

    return cmd_kick(ctx, args.id, args.user)


def _console_url(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.console_url import cmd_console_url

    return cmd_console_url(
        ctx,
        args.user,
        args.domain,
        watch=args.watch,
        takeover=args.takeover,
        seconds=args.ttl,
        as_json=args.json,
    )


def _hosts(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.hosts import cmd_hosts

    return cmd_hosts(ctx, args.json)


def _migrate(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.hosts import cmd_migrate

    return cmd_migrate(ctx, args.domain, args.host, args.timeout, args.json)


def _recordings_list(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.recordings import cmd_recordings_list

    return cmd_recordings_list(ctx, domain=args.domain, user=args.user, as_json=args.json)


def _recordings_export(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.recordings import cmd_recordings_export

    return cmd_recordings_export(ctx, args.id)


def _keys(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin import keys

    if args.keys_command == "list":
        return keys.cmd_keys_list(ctx, args.user, args.json)
    if args.keys_command == "add":
        return keys.cmd_keys_add(ctx, args.user, args.key)
    return keys.cmd_keys_remove(ctx, args.user, args.fingerprint, args.allow_last)


def _install(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.install import cmd_install

    return cmd_install(
        ctx, args.config, args.root, args.prefix, args.dry_run, args.sshd, args.quiet_login
    )


def _uninstall(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.uninstall import cmd_uninstall

    return cmd_uninstall(ctx, args.config, args.root, args.prefix, args.dry_run, args.purge)


def _install_shell(ctx: AdminContext, args: argparse.Namespace, ids: Identities) -> int:
    from vpsshell.admin.launcher import install_launcher
    from vpsshell.admin.tenant_access import refuse_unusable_launcher
    from vpsshell.daemon.config import load_config

    config = load_config(args.config) if os.path.exists(args.config) else ctx.config
    refuse_unusable_launcher(config.socket_group)
    install_launcher(args.path)
    ctx.out(f"installed {args.path} (runs {sys.executable} -I)")
    return AdminExit.OK


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (also read by the test that checks the man page covers it)."""
    # Accepting --config after a subcommand too: SUPPRESS keeps the top-level value unless the
    # option is given again there.
    late_config = argparse.ArgumentParser(add_help=False)
    late_config.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    read_only = argparse.ArgumentParser(add_help=False)
    read_only.add_argument(
        "--policy-dir",
        metavar="DIR",
        help="read this policy directory instead of the config's (e.g. a checkout in CI)",
    )

    parser = argparse.ArgumentParser(
        prog="vpsshell-admin", description="vpsshell administration tools", epilog=EPILOG
    )
    parser.add_argument(
        "--config",
        default=paths.DAEMON_CONFIG,
        metavar="FILE",
        help=f"the helper's config, to find the policy, sockets and logs ({paths.DAEMON_CONFIG})",
    )
    parser.add_argument("--version", action="version", version=f"vpsshell-admin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help_text: str,
        handler: Handler | None,
        parents: Sequence[argparse.ArgumentParser] = (),
    ) -> argparse.ArgumentParser:
        leaf = group.add_parser(
            name, help=help_text, description=help_text, parents=[late_config, *parents]
        )
        if handler is not None:
            leaf.set_defaults(handler=handler)
        return leaf

    policy = command(sub, "policy", "check, change and explain the policy", None)
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    check = command(psub, "check", "validate the policy directory", _check, [read_only])
    check.add_argument(
        "--strict",
        action="store_true",
        help="also warn about rules that can never match, unused sets and, if the helper runs, "
        "domains its backend does not know (warnings fail)",
    )
    check.add_argument(
        "--planned",
        action="append",
        metavar="DOMAINS",
        help="domains that do not exist yet on purpose (comma list; may be repeated)",
    )

    edit = command(psub, "edit", "edit a policy file safely (like visudo)", _edit)
    edit.add_argument("file", nargs="?", metavar="FILE", help="default: 50-local.policy")
    edit.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="apply a valid edit without asking (one with errors is discarded, exit 1)",
    )

    grant = command(psub, "grant", "allow SUBJECT to do ACTIONS on DOMAINS", _grant)
    grant.add_argument("subject", metavar="SUBJECT", help="user:NAME or group:NAME")
    grant.add_argument("actions", metavar="ACTIONS", help="comma list of actions and @sets")
    grant.add_argument("domains", nargs="+", metavar="DOMAINS", help="domains and @sets")
    grant.add_argument("--expires", type=_expires, metavar="DATE", help="last day (YYYY-MM-DD)")
    grant.add_argument("--reason", metavar="TEXT", help="a note kept with the rule")
    grant.add_argument(
        "--confirm", choices=["password"], help="ask for the tenant's password first"
    )
    grant.add_argument("--dry-run", action="store_true", help="show the change, do not make it")
    grant.add_argument(
        "--planned",
        action="store_true",
        help="the domains do not exist yet on purpose: no warning that the backend lacks them",
    )

    revoke = command(psub, "revoke", "remove a grant made with grant", _revoke)
    revoke.add_argument("subject", metavar="SUBJECT", help="user:NAME or group:NAME")
    revoke.add_argument("actions", metavar="ACTIONS", help="comma list of actions, @sets or *")
    revoke.add_argument("domains", nargs="+", metavar="DOMAINS", help="domains, @sets or *")
    revoke.add_argument("--dry-run", action="store_true", help="show the change, do not make it")

    explain = command(
        psub, "explain", "why USER may or may not do ACTION on DOMAIN", _explain, [read_only]
    )
    explain.add_argument("user", metavar="USER")
    explain.add_argument("action", metavar="ACTION")
    explain.add_argument("domain", metavar="DOMAIN")

    who = command(psub, "who", "who may do what on DOMAIN", _who, [read_only])
    who.add_argument("domain", metavar="DOMAIN")
    who.add_argument("--json", action="store_true", help="print JSON")

    listing = command(psub, "list", "everything USER may do", _list, [read_only])
    listing.add_argument("user", metavar="USER")
    listing.add_argument("--json", action="store_true", help="print JSON")

    test = command(psub, "test", "check a file of allow/deny assertions", _test, [read_only])
    test.add_argument("file", metavar="FILE")
    test.add_argument("-v", "--verbose", action="store_true", help="also list passing lines")

    audit = command(sub, "audit", "show the audit log", _audit)
    audit.add_argument("--follow", "-f", action="store_true", help="keep showing new records")
    audit.add_argument("--user", metavar="USER", help="only this user (name or uid)")
    audit.add_argument("--domain", metavar="DOMAIN", help="only this domain")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument("--lines", "-n", type=_count, metavar="N", help="only the last N records")

    command(sub, "reload", "make the running helper reload the policy now", _reload)

    sessions = command(sub, "sessions", "list console sessions in the running helper", _sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")

    kick = command(sub, "kick", "end console sessions (by ID, or all of a user's)", _kick)
    kick.add_argument("id", nargs="?", type=int, metavar="ID", help="a session ID from sessions")
    kick.add_argument("--user", metavar="USER", help="every console session of USER")

    url = command(
        sub, "console-url", "a one-time browser console link for USER (panels)", _console_url
    )
    url.add_argument("user", metavar="USER")
    url.add_argument("domain", metavar="DOMAIN")
    url_mode = url.add_mutually_exclusive_group()
    url_mode.add_argument("--watch", action="store_true", help="a link to watch only")
    url_mode.add_argument(
        "--takeover", action="store_true", help="the page takes the console from its writer"
    )
    url.add_argument(
        "--ttl", type=_seconds, metavar="S", help="valid S seconds (the helper's default: 60)"
    )
    url.add_argument("--json", action="store_true", help="print JSON (url, user, expiry...)")

    hosts = command(sub, "hosts", "the gateway's hosts: connected, lost since, domains", _hosts)
    hosts.add_argument("--json", action="store_true", help="print JSON")

    migrate = command(sub, "migrate", "live-migrate DOMAIN to HOST (libvirt backend)", _migrate)
    migrate.add_argument("domain", metavar="DOMAIN")
    migrate.add_argument("host", metavar="HOST", help="a host label, as hosts shows it")
    migrate.add_argument(
        "--timeout", type=_seconds, default=600, metavar="S", help="give up after S s (600)"
    )
    migrate.add_argument("--json", action="store_true", help="print JSON")

    recordings = command(sub, "recordings", "recorded console sessions", None)
    rsub = recordings.add_subparsers(dest="recordings_command", required=True, metavar="SUBCOMMAND")
    rlist = command(rsub, "list", "list the recordings, oldest first", _recordings_list)
    rlist.add_argument("--domain", metavar="DOMAIN", help="only this domain's")
    rlist.add_argument("--user", metavar="USER", help="only this user's sessions")
    rlist.add_argument("--json", action="store_true", help="print JSON")
    export = command(
        rsub,
        "export",
        "print recording ID as asciicast v2 (asciinema play FILE)",
        _recordings_export,
    )
    export.add_argument("id", metavar="ID", help="a recording ID from recordings list")

    keys = command(sub, "keys", "a tenant's SSH public keys (the tenant's keys verb)", None)
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    klist = command(ksub, "list", "USER's keys: type, bits, fingerprint, comment, added", _keys)
    klist.add_argument("user", metavar="USER")
    klist.add_argument("--json", action="store_true", help="print JSON")
    kadd = command(ksub, "add", "add one public key line (words, or stdin) for USER", _keys)
    kadd.add_argument("user", metavar="USER")
    kadd.add_argument("key", nargs="*", metavar="KEY", help="the .pub line; none: read stdin")
    kremove = command(
        ksub, "remove", "remove USER's key FINGERPRINT; ends USER's live sessions", _keys
    )
    kremove.add_argument("user", metavar="USER")
    kremove.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA256:... as list shows")
    kremove.add_argument(
        "--allow-last", action="store_true", help="also the last key (USER cannot log in then)"
    )

    install = command(sub, "install", "install config, PAM, systemd, man pages, shell", _install)
    install.add_argument("--root", default="/", metavar="DIR", help="install into DIR (default /)")
    install.add_argument(
        "--prefix", default="/usr/local", metavar="DIR", help="bin/, sbin/, share/man/ under DIR"
    )
    install.add_argument("--dry-run", action="store_true", help="only say what would change")
    install.add_argument(
        "--sshd", action="store_true", help="also install the sshd snippet into sshd_config.d"
    )
    install.add_argument(
        "--quiet-login",
        action="store_true",
        help="skip pam_motd in /etc/pam.d/sshd for the tenants' group (no host MOTD or kernel)",
    )

    uninstall = command(sub, "uninstall", "remove what install wrote", _uninstall)
    uninstall.add_argument("--root", default="/", metavar="DIR", help="as given to install")
    uninstall.add_argument("--prefix", default="/usr/local", metavar="DIR", help="as install's")
    uninstall.add_argument("--dry-run", action="store_true", help="only say what would go")
    uninstall.add_argument(
        "--purge",
        action="store_true",
        help="also the edited config files and the policy, hooks and authorized_keys dirs",
    )

    shell = command(sub, "install-shell", "write the isolated login-shell launcher", _install_shell)
    shell.add_argument("--path", default="/usr/local/bin/vpsshell", metavar="PATH")
    return parser


def _config(path: str, command: str) -> object:
    from vpsshell.daemon.config import DaemonConfig, load_config

    if command in ("install", "install-shell", "uninstall"):
        return DaemonConfig()  # install reads the config inside its root itself
    if path == paths.DAEMON_CONFIG and not os.path.exists(path):
        return DaemonConfig()
    return load_config(path)


def run(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    now: _dt.datetime | None = None,
    identities: Identities | None = None,
) -> int:
    """Parse ``argv``, run the command, return the exit status (the one place for errors)."""
    from vpsshell.daemon.config import ConfigError, DaemonConfig

    args = build_parser().parse_args(argv)
    err = stderr or sys.stderr
    try:
        config = _config(args.config, args.command)
        assert isinstance(config, DaemonConfig)
        ctx = AdminContext(
            config=config,
            stdin=stdin or sys.stdin,
            stdout=stdout or sys.stdout,
            stderr=err,
            environ=dict(os.environ if environ is None else environ),
            now=now,
        )
        return int(args.handler(ctx, args, identities or Identities()))
    except AdminError as exc:
        err.write(f"vpsshell-admin: {exc.message}\n")
        return exc.exit_code
    except ConfigError as exc:
        err.write(f"vpsshell-admin: {exc}\n")
        return AdminExit.USAGE
    except BrokenPipeError:
        raise
    except OSError as exc:
        err.write(f"vpsshell-admin: {exc}\n")
        return AdminExit.FAILED


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`vpsshell-admin audit | head`); say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return AdminExit.OK


if __name__ == "__main__":
    sys.exit(main())
