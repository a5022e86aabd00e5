"""``vpsshell-admin uninstall``: take back what ``install`` wrote, and nothing else.

It works from the same layout as install (install.Layout: the config's paths and group, the
prefix), so it removes only paths install writes. Program files (man pages, the launcher when it
is ours, the ``sbin`` links when they point at this installation) are removed; config-like
files (the helper's config, PAM service, units, sshd snippet, the empty ``50-local.policy``) are
removed only while they are exactly what install wrote, since anything else is the admin's
work, which only ``--purge`` removes (with the policy, hooks and authorized_keys directories).
The launcher's line leaves ``/etc/shells``, the ``--quiet-login`` line leaves sshd's PAM file.
The tenants' group, the state directory and the logs stay: the helper made them, tenants may
still be in the group, and logs are records; only the helper's own diagnostic log
(``vpsshelld.log`` beside the audit log, with its rotated copies) goes with ``--purge``.
``--dry-run`` only says what it would do.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from dataclasses import dataclass, field

from vpsshell.admin import quiet_login
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.install import (
    SHELLS,
    ConfigFile,
    Installer,
    Layout,
    layout_for,
    update_man_index,
)
from vpsshell.admin.launcher import LAUNCHER_MARK
from vpsshell.admin.policydir import LOCK_NAME
from vpsshell.daemon.main import FALLBACK_LOG_NAME


@dataclass
class Remover:
    installer: Installer
    purge: bool
    removed: int = 0
    #: paths removed so far (or, in a dry run, that would be): a directory whose every entry
    #: is here counts as empty
    gone: set[str] = field(default_factory=set)

    @property
    def ctx(self) -> AdminContext:
        return self.installer.ctx

    def report(self, verb: str, path: str, detail: str = "") -> None:
        if verb == "removed":
            self.removed += 1
            self.gone.add(path)
            if self.installer.dry_run:
                verb = "would remove"
        suffix = f" ({detail})" if detail else ""
        self.ctx.out(f"{verb:<14} {path}{suffix}")

    def unlink(self, path: str, detail: str = "") -> None:
        if not self.installer.dry_run:
            os.unlink(self.installer.at(path))
        self.report("removed", path, detail)

    def program_file(self, path: str, *, mark: bytes = b"") -> None:
        """A file that is part of the program; with ``mark``, only if it holds it."""
        target = self.installer.at(path)
        if not os.path.lexists(target):
            self.report("absent", path)
            return
        if mark:
            with open(target, "rb") as fh:
                if mark not in fh.read(4096):
                    self.report("kept", path, "not written by vpsshell-admin")
                    return
        self.unlink(path)

    def config_file(self, shipped: ConfigFile) -> None:
        target = self.installer.at(shipped.path)
        try:
            with open(target, "rb") as fh:
                current = fh.read()
        except FileNotFoundError:
            self.report("absent", shipped.path)
            return
        if current == shipped.content:
            self.unlink(shipped.path, "as installed")
        elif self.purge:
            self.unlink(shipped.path, "edited; --purge")
        else:
            self.report("kept", shipped.path, "edited: --purge removes it")

    def link(self, path: str, points_to: str) -> None:
        target = self.installer.at(path)
        if not os.path.lexists(target):
            self.report("absent", path)
        elif os.path.islink(target) and os.readlink(target) == points_to:
            self.unlink(path, f"-> {points_to}")
        else:
            self.report("kept", path, "not a link to this installation")

    def directory(self, path: str, *, purgeable: bool) -> None:
        target = self.installer.at(path)
        if not os.path.isdir(target):
            self.report("absent", path)
            return
        left = [
            name
            for name in sorted(os.listdir(target))
            if os.path.join(path, name) not in self.gone and name != LOCK_NAME
        ]
        if not left:
            if not self.installer.dry_run:
                # the admin tool's lock file, left by every policy change, is not the admin's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(target, LOCK_NAME))
                os.rmdir(target)
            self.report("removed", path)
        elif purgeable and self.purge:
            if not self.installer.dry_run:
                shutil.rmtree(target)
            self.report("removed", path, f"--purge: and the {len(left)} entries in it")
        else:
            names = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
            hint = "; --purge removes it" if purgeable else ""
            self.report("kept", path, f"holds {names}{hint}")

    def shells_line(self, line: str) -> None:
        target = self.installer.at(SHELLS)
        try:
            with open(target, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            self.report("absent", SHELLS)
            return
        lines = text.splitlines(keepends=True)
        kept = [entry for entry in lines if entry.rstrip("\n") != line]
        if kept == lines:
            self.report("absent", SHELLS, line)
            return
        if not self.installer.dry_run:
            self.installer.write_keeping_mode(target, "".join(kept).encode())
        self.report("removed", SHELLS, line)

    def pam_skip_line(self) -> None:
        target = self.installer.at(quiet_login.PAM_SSHD)
        try:
            with open(target, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return
        if not quiet_login.has_skip(text):
            return
        if not self.installer.dry_run:
            self.installer.write_keeping_mode(target, quiet_login.without_skip(text).encode())
        self.report("removed", quiet_login.PAM_SSHD, "the --quiet-login line")


def _is_helper_log(name: str) -> bool:
    """``vpsshelld.log`` or one of logrotate's copies of it (``.1``, ``.2.gz``, ...)."""
    if name == FALLBACK_LOG_NAME:
        return True
    rotation = name.removeprefix(FALLBACK_LOG_NAME + ".").removesuffix(".gz")
    return name != rotation and rotation.isdigit()


def _helper_logs(remover: Remover, log_dir: str) -> None:
    """The helper's own log (written beside the audit log when a detached helper finds no
    syslog): diagnostics, not records, so ``--purge`` removes it with its rotated copies."""
    target = remover.installer.at(log_dir)
    names = sorted(filter(_is_helper_log, os.listdir(target))) if os.path.isdir(target) else []
    for name in names:
        path = os.path.join(log_dir, name)
        if remover.purge:
            remover.unlink(path, "--purge: the helper's own log")
        else:
            remover.report("kept", path, "the helper's own log: --purge removes it")


def _tenants_with_shell(shell: str) -> list[str]:
    return sorted(entry.pw_name for entry in pwd.getpwall() if entry.pw_shell == shell)


def _helper_answers(ctx: AdminContext) -> bool:
    from vpsshell.admin.helper import admin_call
    from vpsshell.errors import Unavailable, VpsError

    try:
        admin_call(ctx, "sessions", timeout=5.0)
    except Unavailable:
        return False
    except VpsError:
        return True
    return True


def cmd_uninstall(
    ctx: AdminContext, config_path: str, root: str, prefix: str, dry_run: bool, purge: bool
) -> int:
    if not os.path.isabs(root) or not os.path.isabs(prefix):
        raise AdminError("--root and --prefix must be absolute paths", AdminExit.USAGE)
    installer = Installer(ctx, os.path.normpath(root), dry_run)
    layout: Layout = layout_for(installer, config_path, prefix)
    remover = Remover(installer, purge)
    real_root = installer.root == "/"
    if real_root and _helper_answers(ctx):
        ctx.note(
            "note: the helper is running; stop it first (systemctl disable --now vpsshelld "
            "vpsshelld.socket, or kill it): its files are removed from under it"
        )

    config, *system_files = layout.config_files()
    for path, _ in layout.man_pages():
        remover.program_file(path)
    remover.program_file(layout.shell_path, mark=LAUNCHER_MARK.encode())
    remover.program_file(layout.antispoof_hook)
    for directory in (
        os.path.dirname(layout.antispoof_hook),
        os.path.dirname(os.path.dirname(layout.antispoof_hook)),
    ):
        remover.directory(directory, purgeable=False)
    for link, points_to in layout.links():
        remover.link(link, points_to)
    remover.shells_line(layout.shell_path)
    remover.pam_skip_line()
    for shipped in system_files:
        remover.config_file(shipped)
    remover.config_file(layout.local_policy())
    config_dir, *data_dirs = layout.directories()
    for directory in data_dirs:
        remover.directory(directory, purgeable=True)
    remover.config_file(config)
    remover.directory(config_dir, purgeable=False)
    log_dir = os.path.dirname(layout.audit_log)
    _helper_logs(remover, log_dir)

    if remover.removed and not dry_run:
        update_man_index(ctx, installer.root, layout.man_dir)
    helper_log = "" if purge else f", {os.path.join(log_dir, FALLBACK_LOG_NAME)}"
    ctx.note(
        f"note: kept the group {layout.socket_group}, the helper's state and its logs "
        f"(state_dir, audit_log, console_log_dir in vpsshelld(8){helper_log}); remove them "
        "by hand if wanted"
    )
    if real_root:
        users = _tenants_with_shell(layout.shell_path)
        if users:
            ctx.note(
                f"warning: these accounts still have the login shell {layout.shell_path}, which "
                f"no longer exists: {', '.join(users)}"
            )
    verb = "would be removed" if dry_run else "removed"
    ctx.out(f"{'dry run: ' if dry_run else ''}{remover.removed} item(s) {verb}")
    return AdminExit.OK
