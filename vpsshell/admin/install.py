"""``vpsshell-admin install``: put vpsshell's system files in place, idempotently.

Config-like files (the helper's config, the PAM service, the systemd units, the logrotate file,
the sshd snippet) are written only if absent: an admin's edits are never overwritten, and a
differing file is reported as kept. Files that are part of the program (man pages, the
login-shell launcher, the ``sbin`` links) are updated when they differ. ``--root`` installs
into another tree (packaging, tests); ``--dry-run`` only says what would change. The shipped
files come from the installed package's data (``share/vpsshell`` and ``share/man`` under the
venv) or, when running from a source checkout, from the checkout. This module never edits
sshd's own config: the snippet goes into ``sshd_config.d`` only with ``--sshd``, and sshd's PAM
file gets one marked line only with ``--quiet-login`` (quiet_login.py). Layout is the one list
of what install writes, which uninstall.py takes back. Nothing is written if the tenants'
group could not run the launcher's Python (tenant_access.py).
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vpsshell import paths
from vpsshell.admin import quiet_login
from vpsshell.admin.context import AdminContext, AdminError, AdminExit
from vpsshell.admin.launcher import launcher_text
from vpsshell.admin.tenant_access import refuse_unusable_launcher

if TYPE_CHECKING:
    from vpsshell.daemon.config import DaemonConfig

#: Shipped files: name in the source tree -> where pip puts it under sys.prefix.
SHIPPED = {
    "pam/vpsshell": "share/vpsshell/pam/vpsshell",
    "systemd/vpsshelld.service": "share/vpsshell/systemd/vpsshelld.service",
    "systemd/vpsshelld.socket": "share/vpsshell/systemd/vpsshelld.socket",
    "sshd/vpsshell.conf": "share/vpsshell/sshd/vpsshell.conf",
    "logrotate/vpsshell": "share/vpsshell/logrotate/vpsshell",
    "hooks/antispoof": "share/vpsshell/hooks/antispoof",
    "man/vpsshell.1": "share/man/man1/vpsshell.1",
    "man/vpsshell-policy.5": "share/man/man5/vpsshell-policy.5",
    "man/vpsshelld.8": "share/man/man8/vpsshelld.8",
    "man/vpsshell-admin.8": "share/man/man8/vpsshell-admin.8",
    "man/vpsshell-web.8": "share/man/man8/vpsshell-web.8",
}
MAN_PAGES = [name for name in SHIPPED if name.startswith("man/")]
#: The daemon path written in the shipped unit; replaced by PREFIX/sbin/vpsshelld.
UNIT_EXEC = "/usr/local/sbin/vpsshelld"
PAM_SERVICE = "/etc/pam.d/vpsshell"
UNIT_FILE = "/etc/systemd/system/vpsshelld.service"
SOCKET_UNIT_FILE = "/etc/systemd/system/vpsshelld.socket"
SSHD_SNIPPET = "/etc/ssh/sshd_config.d/vpsshell.conf"
LOGROTATE_FILE = "/etc/logrotate.d/vpsshell"
AUTHORIZED_KEYS_DIR = "/etc/vpsshell/authorized_keys"
TOTP_DIR = "/etc/vpsshell/totp"  # pam_oath's users file (secrets): root only
PRIVATE_DIRECTORIES = frozenset({TOTP_DIR})
SHELLS = "/etc/shells"
LOCAL_POLICY = "50-local.policy"

CONFIG_TEMPLATE = f"""\
# vpsshelld configuration; see vpsshelld(8). Written by `vpsshell-admin install`.
# Every key is optional: the values below are the defaults. Unknown keys are errors;
# check with `vpsshelld --check-config`.
socket = "{paths.SOCKET}"
socket_group = "{paths.SOCKET_GROUP}"          # tenants' group; socket mode 0660
admin_socket = "{paths.ADMIN_SOCKET}"
policy_dir = "{paths.POLICY_DIR}"
audit_log = "{paths.AUDIT_LOG}"
state_dir = "{paths.STATE_DIR}"
console_log_dir = "{paths.CONSOLE_LOG_DIR}"
hooks_dir = "{paths.HOOKS_DIR}"
policy_poll_seconds = 1.0
pam_service = "vpsshell"               # account checks and confirm=password; "" turns PAM off

[backend]
type = "sim"                           # the simulated host (see vpsshelld(8) for others)

# [[backend.domains]]                  # sim only: one table per simulated domain
# name = "web1"
# vcpus = 1
# memory_mib = 512
# boot_seconds = 2
"""


def source_root() -> Path:
    """The source checkout this package runs from (only meaningful when it is one)."""
    return Path(__file__).resolve().parents[2]


def shipped_file(name: str) -> Path | None:
    """Where the shipped file ``name`` (e.g. ``pam/vpsshell``) is, or None if not shipped."""
    for candidate in (Path(sys.prefix) / SHIPPED[name], source_root() / name):
        if candidate.is_file():
            return candidate
    return None


_PRESENT = {"created": "create", "updated": "update", "added": "add"}


@dataclass
class Installer:
    ctx: AdminContext
    root: str
    dry_run: bool
    changed: int = 0

    def at(self, path: str) -> str:
        """``path`` (absolute, as on the installed system) inside the install root."""
        return os.path.join(self.root, path.lstrip("/"))

    def report(self, verb: str, path: str, detail: str = "") -> None:
        if verb not in ("unchanged", "kept", "skipped"):
            self.changed += 1
            if self.dry_run:
                verb = "would " + _PRESENT[verb]
        suffix = f" ({detail})" if detail else ""
        self.ctx.out(f"{verb:<14} {path}{suffix}")

    def directory(self, path: str, mode: int) -> None:
        target = self.at(path)
        if os.path.isdir(target):
            self.report("unchanged", path)
            return
        if not self.dry_run:
            os.makedirs(target, mode=0o755, exist_ok=True)
            os.chmod(target, mode)
        self.report("created", path)

    def _write(self, target: str, content: bytes, mode: int) -> None:
        directory = os.path.dirname(target)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".vpsshell-install-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write_keeping_mode(self, target: str, content: bytes) -> None:
        """Replace an existing file atomically, with its mode (a system file we amend)."""
        self._write(target, content, stat.S_IMODE(os.stat(target).st_mode))

    def file(self, path: str, content: bytes, mode: int, *, ours: bool, source: str = "") -> None:
        """Write ``path``; a config-like file (``ours=False``) only if it does not exist."""
        target = self.at(path)
        try:
            with open(target, "rb") as fh:
                current: bytes | None = fh.read()
        except FileNotFoundError:
            current = None
        if current == content:
            if not self.dry_run and ours and (os.stat(target).st_mode & 0o7777) != mode:
                os.chmod(target, mode)
            self.report("unchanged", path)
            return
        if current is not None and not ours:
            self.report("kept", path, f"yours differs from the shipped {source or 'default'}")
            return
        if not self.dry_run:
            self._write(target, content, mode)
        self.report("created" if current is None else "updated", path)

    def symlink(self, path: str, points_to: str) -> None:
        target = self.at(path)
        if os.path.islink(target) and os.readlink(target) == points_to:
            self.report("unchanged", path)
            return
        if os.path.lexists(target) and not os.path.islink(target):
            self.report("kept", path, "not a symbolic link; left alone")
            return
        existed = os.path.lexists(target)
        if not self.dry_run:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            tmp = f"{target}.vpsshell-install"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(points_to, tmp)
            os.replace(tmp, target)
        self.report("updated" if existed else "created", path, f"-> {points_to}")

    def line(self, path: str, line: str) -> None:
        target = self.at(path)
        try:
            with open(target, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            text = ""
        if line in text.splitlines():
            self.report("unchanged", path, line)
            return
        if not self.dry_run:
            prefix = "" if text.endswith("\n") or not text else "\n"
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(f"{prefix}{line}\n")
            if not text:
                os.chmod(target, 0o644)
        self.report("added", path, line)

    def group(self, name: str) -> None:
        try:
            grp.getgrnam(name)
        except KeyError:
            pass
        else:
            self.report("unchanged", f"group {name}")
            return
        if self.root != "/":
            self.report("skipped", f"group {name}", "not created outside the real root")
            return
        if not self.dry_run:
            done = subprocess.run(
                ["/usr/sbin/groupadd", "--system", name], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise AdminError(f"groupadd {name} failed: {done.stderr.strip()}")
        self.report("created", f"group {name}")


def _shipped_bytes(name: str) -> bytes | None:
    path = shipped_file(name)
    return path.read_bytes() if path is not None else None


def _config_for(installer: Installer, config_path: str) -> DaemonConfig:
    """The config in the root, else the defaults."""
    from vpsshell.daemon.config import ConfigError, DaemonConfig, load_config

    target = installer.at(config_path)
    config = DaemonConfig()
    if os.path.exists(target):
        try:
            config = load_config(target)
        except ConfigError as exc:
            raise AdminError(f"cannot use the existing config: {exc}") from None
    return config


@dataclass(frozen=True)
class ConfigFile:
    """A file the admin may edit: written only if absent; ``source`` names the shipped one."""

    path: str
    content: bytes
    source: str


@dataclass(frozen=True)
class Layout:
    """Everything ``install`` writes, and so everything ``uninstall`` may remove."""

    config_path: str
    prefix: str
    policy_dir: str
    hooks_dir: str
    socket_group: str
    audit_log: str

    @property
    def man_dir(self) -> str:
        return os.path.join(self.prefix, "share", "man")

    @property
    def shell_path(self) -> str:
        return os.path.join(self.prefix, "bin", "vpsshell")

    @property
    def daemon_path(self) -> str:
        """The helper's link in ``sbin``: what the unit runs, and what to run without one."""
        return os.path.join(self.prefix, "sbin", "vpsshelld")

    @property
    def antispoof_hook(self) -> str:
        """The shipped anti-spoofing hook: outside ``hooks_dir``, so nothing runs it until the
        admin enables it there (README, "Network protection")."""
        return os.path.join(self.prefix, "share", "vpsshell", "hooks", "antispoof")

    def directories(self) -> list[str]:
        """In the order they are created (parents first)."""
        return [
            os.path.dirname(self.config_path),
            self.policy_dir,
            self.hooks_dir,
            AUTHORIZED_KEYS_DIR,
            TOTP_DIR,
        ]

    def local_policy(self) -> ConfigFile:
        from vpsshell.admin.edit import NEW_FILE_TEMPLATE

        path = os.path.join(self.policy_dir, LOCAL_POLICY)
        return ConfigFile(path, NEW_FILE_TEMPLATE.encode(), "template")

    def config_files(self) -> list[ConfigFile]:
        """The helper's config, PAM service, units and the sshd snippet, as install writes
        them (the shipped text with this layout's paths and group put in)."""
        pam = _shipped_bytes("pam/vpsshell")
        unit = _shipped_bytes("systemd/vpsshelld.service")
        snippet = _shipped_bytes("sshd/vpsshell.conf")
        if pam is None or unit is None or snippet is None:
            raise AdminError(
                "the shipped files (pam/, systemd/, sshd/) are missing from this install"
            )
        files = [
            ConfigFile(self.config_path, CONFIG_TEMPLATE.encode(), "default"),
            ConfigFile(PAM_SERVICE, pam, "pam/vpsshell"),
            ConfigFile(
                UNIT_FILE,
                unit.replace(UNIT_EXEC.encode(), self.daemon_path.encode()),
                "systemd/vpsshelld.service",
            ),
        ]
        socket_unit = _shipped_bytes("systemd/vpsshelld.socket")
        if socket_unit is not None:
            group_line = f"SocketGroup={self.socket_group}\n".encode()
            socket_unit = socket_unit.replace(
                f"SocketGroup={paths.SOCKET_GROUP}\n".encode(), group_line
            )
            files.append(ConfigFile(SOCKET_UNIT_FILE, socket_unit, "systemd/vpsshelld.socket"))
        match_line = f"Match Group {self.socket_group}\n".encode()
        snippet = snippet.replace(f"Match Group {paths.SOCKET_GROUP}\n".encode(), match_line)
        files.append(ConfigFile(SSHD_SNIPPET, snippet, "sshd/vpsshell.conf"))
        logrotate = _shipped_bytes("logrotate/vpsshell")
        if logrotate is not None:  # the shipped file names the default log directory
            log_dir = os.path.dirname(self.audit_log) + "/"
            default_dir = os.path.dirname(paths.AUDIT_LOG) + "/"
            logrotate = logrotate.replace(default_dir.encode(), log_dir.encode())
            files.append(ConfigFile(LOGROTATE_FILE, logrotate, "logrotate/vpsshell"))
        return files

    def man_pages(self) -> list[tuple[str, bytes | None]]:
        pages = []
        for name in MAN_PAGES:
            section = name.rsplit(".", 1)[1]
            path = os.path.join(
                self.prefix, "share", "man", f"man{section}", os.path.basename(name)
            )
            pages.append((path, _shipped_bytes(name)))
        return pages

    def links(self) -> list[tuple[str, str]]:
        scripts = sysconfig.get_path("scripts")
        return [
            (os.path.join(self.prefix, "sbin", program), os.path.join(scripts, program))
            for program in ("vpsshelld", "vpsshell-admin")
        ]


def layout_for(installer: Installer, config_path: str, prefix: str) -> Layout:
    config = _config_for(installer, config_path)
    return Layout(
        config_path,
        prefix,
        config.policy_dir,
        config.hooks_dir,
        config.socket_group,
        config.audit_log,
    )


def quiet_login_pam(installer: Installer, group: str) -> None:
    """``--quiet-login``: the marked pam_succeed_if line before sshd's pam_motd lines."""
    target = installer.at(quiet_login.PAM_SSHD)
    try:
        with open(target, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        installer.report("skipped", quiet_login.PAM_SSHD, "absent: is openssh-server installed?")
        return
    changed = quiet_login.with_skip(text, group)
    if changed is None:
        installer.report("skipped", quiet_login.PAM_SSHD, "no pam_motd line: nothing to skip")
    elif changed == text:
        installer.report("unchanged", quiet_login.PAM_SSHD, "pam_motd skipped for tenants")
    else:
        if not installer.dry_run:
            installer.write_keeping_mode(target, changed.encode())
        installer.report("updated", quiet_login.PAM_SSHD, f"pam_motd skipped for group {group}")


MANPATH_CONFIG = "/etc/manpath.config"


def man_dir_aliases(man_dir: str, manpath_config: str) -> list[str]:
    """Other names of ``man_dir`` in man-db's config, each with an index of its own. Debian's
    ``/usr/local/man`` is a link to ``share/man`` and comes first in root's manpath, so
    whatis reads its index (``/var/cache/man/oldlocal``), not the one of ``share/man``."""
    named: dict[str, None] = {}  # in the config's order, once each
    for line in manpath_config.splitlines():
        match line.split():
            case ["MANDATORY_MANPATH" | "MANDB_MAP", directory, *_]:
                named[directory] = None
            case ["MANPATH_MAP", _, directory, *_]:
                named[directory] = None
    real = os.path.realpath(man_dir)
    return [
        directory
        for directory in named
        if directory != man_dir and os.path.realpath(directory) == real
    ]


def update_man_index(ctx: AdminContext, root: str, man_dir: str) -> None:
    """Let apropos and whatis find the pages: run mandb on ``man_dir`` (and on each other name
    man-db knows it by), or say to."""
    mandb = shutil.which("mandb")
    if root != "/":
        ctx.note("note: run `mandb` on the installed system so apropos and whatis find the pages")
        return
    if mandb is None:
        ctx.note("note: no mandb here; update the man page index so apropos finds the pages")
        return
    try:
        with open(MANPATH_CONFIG, encoding="utf-8") as fh:
            aliases = man_dir_aliases(man_dir, fh.read())
    except OSError:
        aliases = []
    for directory in [man_dir, *aliases]:
        done = subprocess.run([mandb, "-q", directory], capture_output=True, text=True)
        if done.returncode != 0:
            ctx.note(f"warning: mandb {directory} failed: {done.stderr.strip()}")
        else:
            ctx.out(f"{'indexed':<14} {directory} (mandb)")


def cmd_install(
    ctx: AdminContext,
    config_path: str,
    root: str,
    prefix: str,
    dry_run: bool,
    sshd: bool,
    hide_login_banner: bool = False,
) -> int:
    if not os.path.isabs(root) or not os.path.isabs(prefix):
        raise AdminError("--root and --prefix must be absolute paths", AdminExit.USAGE)
    installer = Installer(ctx, os.path.normpath(root), dry_run)
    layout = layout_for(installer, config_path, prefix)
    refuse_unusable_launcher(layout.socket_group)

    config_dir, *data_dirs = layout.directories()
    installer.directory(config_dir, 0o755)
    config, *system_files = layout.config_files()
    installer.file(config.path, config.content, 0o644, ours=False)
    for directory in data_dirs:
        installer.directory(directory, 0o700 if directory in PRIVATE_DIRECTORIES else 0o755)
    policy_dir = installer.at(layout.policy_dir)
    existing = os.listdir(policy_dir) if os.path.isdir(policy_dir) else []
    if not any(name.endswith(".policy") for name in existing):
        local = layout.local_policy()
        installer.file(local.path, local.content, 0o644, ours=False)

    # without --sshd, a snippet an earlier --sshd installed is reported like the others
    skip_snippet = not sshd and not os.path.lexists(installer.at(SSHD_SNIPPET))
    for shipped in system_files:
        if shipped.path == SSHD_SNIPPET and skip_snippet:
            installer.report("skipped", SSHD_SNIPPET, "add --sshd to install it")
            continue
        installer.file(shipped.path, shipped.content, 0o644, ours=False, source=shipped.source)
    if hide_login_banner:
        quiet_login_pam(installer, layout.socket_group)

    pages_changed = installer.changed
    for path, page in layout.man_pages():
        if page is None:
            installer.report("skipped", path, "not shipped with this version")
        else:
            installer.file(path, page, 0o644, ours=True)
    pages_changed = installer.changed != pages_changed

    installer.file(layout.shell_path, launcher_text().encode(), 0o755, ours=True)
    antispoof = _shipped_bytes("hooks/antispoof")
    if antispoof is not None:
        installer.file(layout.antispoof_hook, antispoof, 0o755, ours=True)
    for link, points_to in layout.links():
        installer.symlink(link, points_to)
    installer.line(SHELLS, layout.shell_path)
    installer.group(layout.socket_group)
    if pages_changed and not dry_run:
        update_man_index(ctx, installer.root, layout.man_dir)

    if sshd and not hide_login_banner:
        for line in quiet_login.advice(layout.socket_group):
            ctx.note(line)
    if dry_run:
        ctx.out(f"dry run: {installer.changed} change(s) would be made")
    else:
        ctx.out(f"{installer.changed} change(s) made")
        ctx.out(
            "next: systemctl daemon-reload && systemctl enable --now vpsshelld (without "
            f"systemd: run {layout.daemon_path} as root; it returns once the helper listens); "
            f"give each tenant the login shell {layout.shell_path} and the group "
            f"{layout.socket_group}"
        )
    return AdminExit.OK
