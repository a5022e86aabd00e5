"""``vpsshell-admin``: command line of the administrator's tools.

Subcommands read the helper's config (``--config``) to find the policy directory and the admin
socket. Policy checks work on the files directly; ``reload`` asks the running helper.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from vpsshell import paths

if TYPE_CHECKING:
    from vpsshell.daemon.config import DaemonConfig
    from vpsshell.policy import Policy


def _config(path: str) -> DaemonConfig:
    from vpsshell.daemon.config import DaemonConfig, load_config

    if path == paths.DAEMON_CONFIG and not os.path.exists(path):
        return DaemonConfig()
    return load_config(path)


def _load_policy(config_path: str) -> Policy:
    from vpsshell.policy import load_policy_dir

    config = _config(config_path)
    return load_policy_dir(config.policy_dir, trusted_uids=frozenset({0, os.geteuid()}))


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = _load_policy(args.config)
    for error in policy.errors:
        print(error)
    if policy.errors:
        print(f"{len(policy.errors)} error(s): the helper denies everything until fixed")
        return 1
    print(f"OK: {len(policy.rules)} rule(s) in {len(policy.files)} file(s)")
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    import grp
    import pwd

    policy = _load_policy(args.config)
    try:
        entry = pwd.getpwnam(args.user)
        groups = sorted(
            {grp.getgrgid(g).gr_name for g in os.getgrouplist(entry.pw_name, entry.pw_gid)}
        )
    except KeyError:
        groups = []
        print(f"note: {args.user} is not a known user; explaining with no groups")
    decision = policy.decide(args.user, groups, args.action, args.domain)
    verdict = "ALLOW" if decision.allowed else "DENY"
    print(f"{verdict}: {args.user} {args.action} {args.domain}")
    print(f"groups: {', '.join(groups) or '-'}")
    if decision.reason and not decision.allowed:
        print(f"reason: {decision.reason}")
    if decision.confirm:
        print(f"confirm: {decision.confirm}")
    for rule in decision.matches:
        marker = "*" if rule is decision.deciding else " "
        print(f"{marker} {rule.location}: {rule.to_text()}")
    if not decision.matches:
        print("no rule matches (default deny)")
    return 0 if decision.allowed else 1


def cmd_reload(args: argparse.Namespace) -> int:
    from vpsshell.errors import VpsError
    from vpsshell.shell.client import HelperClient

    client = HelperClient(_config(args.config).admin_socket)
    try:
        result = client.call("reload", {})
    except VpsError as exc:
        print(f"vpsshell-admin: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    finally:
        client.close()
    for error in result["errors"]:
        print(error)
    print(f"reloaded: {result['rules']} rule(s)" + (", BROKEN" if result["errors"] else ""))
    return 1 if result["errors"] else 0


def cmd_install_shell(args: argparse.Namespace) -> int:
    from vpsshell.admin.launcher import install_launcher

    install_launcher(args.path)
    print(f"installed {args.path} (runs {sys.executable} -I)")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpsshell-admin", description="vpsshell admin tools")
    parser.add_argument("--config", default=paths.DAEMON_CONFIG, help="helper config (TOML)")
    sub = parser.add_subparsers(dest="command", required=True)
    policy = sub.add_parser("policy", help="check and explain the policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser("check", help="validate the policy directory")
    check.set_defaults(func=cmd_policy_check)
    explain = policy_sub.add_parser("explain", help="why USER may or may not do ACTION")
    explain.add_argument("user")
    explain.add_argument("action")
    explain.add_argument("domain")
    explain.set_defaults(func=cmd_policy_explain)
    reload = sub.add_parser("reload", help="make the running helper reload the policy")
    reload.set_defaults(func=cmd_reload)
    install = sub.add_parser("install-shell", help="write the isolated login-shell launcher")
    install.add_argument("--path", default="/usr/local/bin/vpsshell")
    install.set_defaults(func=cmd_install_shell)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from vpsshell.daemon.config import ConfigError

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"vpsshell-admin: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"vpsshell-admin: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
