"""``vpsshell-admin uninstall`` takes back what ``install`` wrote into a root, and only that.

Both run as real processes into a temporary root (``--root``) that starts with files a host
already has (``/etc/shells``, sshd's PAM file from this machine or Debian's, a file of the
admin's under ``/etc/vpsshell``), so the test can compare the tree after uninstall with the
tree before install; the helper's own log goes only with ``--purge``. ``--quiet-login`` and
the install notes about the login banner (MOTD, kernel version, "Last login") are checked on
the same root.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import BIN

from vpsshell.admin.context import AdminContext
from vpsshell.admin.install import man_dir_aliases, update_man_index
from vpsshell.daemon.config import DaemonConfig

ROOT = Path(__file__).resolve().parents[2]

DEBIAN_PAM_SSHD = """\
@include common-auth
account    required     pam_nologin.so
@include common-account
session    required     pam_loginuid.so
@include common-session
# Print the message of the day upon successful login.
session    optional     pam_motd.so  motd=/run/motd.dynamic
session    optional     pam_motd.so noupdate
session    optional     pam_mail.so standard noenv # [1]
session    required     pam_limits.so
"""
SHELLS = "# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/bash\n"


def admin(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vpsshell-admin"), *argv, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root``: file contents, link targets, "dir" for directories."""
    found: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = path.read_bytes()
    return found


@pytest.fixture
def host(open_dir: Path) -> Path:
    """A root with what a Debian host has before vpsshell."""
    root = open_dir / "root"
    (root / "etc/pam.d").mkdir(parents=True)
    (root / "etc/shells").write_text(SHELLS)
    (root / "etc/pam.d/sshd").write_text(DEBIAN_PAM_SSHD)
    # directories a host has anyway (uninstall leaves the directories above its files)
    for directory in (
        "etc/ssh/sshd_config.d",
        "etc/logrotate.d",
        "etc/systemd/system",
        "usr/local/bin",
        "usr/local/sbin",
        "usr/local/share/man/man1",
        "usr/local/share/man/man5",
        "usr/local/share/man/man8",
    ):
        (root / directory).mkdir(parents=True)
    return root


def test_uninstall_leaves_the_root_as_it_was(host: Path) -> None:
    before = tree(host)
    installed = admin(host, "install", "--sshd", "--quiet-login")
    assert installed.returncode == 0, installed
    assert (host / "usr/local/bin/vpsshell").exists()
    assert "/usr/local/bin/vpsshell" in (host / "etc/shells").read_text()
    assert "run `mandb` on the installed system" in installed.stderr  # not run for a --root
    assert (host / "etc/vpsshell/totp").stat().st_mode & 0o777 == 0o700  # TOTP secrets: root only
    (host / "etc/vpsshell/policy.d/.vpsshell-admin.lock").touch()  # left by a policy change
    if (ROOT / "logrotate/vpsshell").exists():
        rotated = (host / "etc/logrotate.d/vpsshell").read_text()
        assert rotated == (ROOT / "logrotate/vpsshell").read_text()

    dry = admin(host, "uninstall", "--dry-run")
    assert dry.returncode == 0, dry
    assert "would remove   /usr/local/bin/vpsshell" in dry.stdout
    assert "would remove   /etc/vpsshell" in dry.stdout  # everything in it would go first
    assert dry.stdout.splitlines()[-1].startswith("dry run: ")
    assert (host / "usr/local/bin/vpsshell").exists()  # nothing changed

    removed = admin(host, "uninstall")
    assert removed.returncode == 0, removed
    assert "removed        /etc/shells (/usr/local/bin/vpsshell)" in removed.stdout
    assert "kept the group" in removed.stderr
    assert tree(host) == before
    again = admin(host, "uninstall")
    assert again.stdout.splitlines()[-1] == "0 item(s) removed", again


def test_the_admins_edits_stay_unless_purge(host: Path) -> None:
    assert admin(host, "install", "--sshd").returncode == 0
    config = host / "etc/vpsshell/vpsshelld.toml"
    config.write_text(config.read_text() + "# edited\n")
    snippet = host / "etc/ssh/sshd_config.d/vpsshell.conf"
    snippet.write_text(snippet.read_text() + "    Banner none\n")
    grant = host / "etc/vpsshell/policy.d/10-tenants.policy"
    grant.write_text("allow user:alice @operator web1\n")

    removed = admin(host, "uninstall")
    assert removed.returncode == 0, removed
    for path in (config, snippet, grant):
        assert path.exists(), path
    assert "kept           /etc/vpsshell/vpsshelld.toml (edited: --purge removes it)" in (
        removed.stdout
    )
    assert "kept           /etc/vpsshell/policy.d (holds 10-tenants.policy" in removed.stdout
    assert not (host / "usr/local/bin/vpsshell").exists()
    assert not (host / "etc/pam.d/vpsshell").exists()  # unedited: removed

    purged = admin(host, "uninstall", "--purge")
    assert purged.returncode == 0, purged
    assert not (host / "etc/vpsshell").exists()
    assert not snippet.exists()


def test_the_helpers_own_log_goes_only_with_purge(host: Path) -> None:
    assert admin(host, "install").returncode == 0
    logs = host / "var/log/vpsshell"
    logs.mkdir(parents=True)
    records = ["audit.jsonl", "audit.jsonl.1", "vpsshelld.log.old"]  # not the helper's log
    helper_logs = ["vpsshelld.log", "vpsshelld.log.1", "vpsshelld.log.2.gz"]
    for name in records + helper_logs:
        (logs / name).write_text("a line\n")

    removed = admin(host, "uninstall")
    assert removed.returncode == 0, removed
    for name in helper_logs:
        kept = f"kept           /var/log/vpsshell/{name} (the helper's own log: --purge removes it)"
        assert kept in removed.stdout
    assert "console_log_dir in vpsshelld(8), /var/log/vpsshell/vpsshelld.log)" in removed.stderr
    assert sorted(os.listdir(logs)) == sorted(records + helper_logs)

    purged = admin(host, "uninstall", "--purge")
    assert purged.returncode == 0, purged
    for name in helper_logs:
        gone = f"removed        /var/log/vpsshell/{name} (--purge: the helper's own log)"
        assert gone in purged.stdout
    assert "vpsshelld.log" not in purged.stderr
    assert sorted(os.listdir(logs)) == sorted(records)


def test_a_launcher_that_is_not_ours_is_kept(host: Path) -> None:
    assert admin(host, "install").returncode == 0
    launcher = host / "usr/local/bin/vpsshell"
    launcher.write_text("#!/bin/sh\necho someone else's vpsshell\n")
    removed = admin(host, "uninstall")
    assert "kept           /usr/local/bin/vpsshell (not written by vpsshell-admin)" in (
        removed.stdout
    )
    assert launcher.exists()


def test_quiet_login_skips_pam_motd_for_the_tenants_group(host: Path) -> None:
    offered = admin(host, "install", "--sshd")
    assert "PrintLastLog" in offered.stderr and "--quiet-login" in offered.stderr, offered
    assert (host / "etc/pam.d/sshd").read_text() == DEBIAN_PAM_SSHD  # only offered
    done = admin(host, "install", "--quiet-login")  # later, without --sshd
    assert done.returncode == 0, done
    assert "unchanged      /etc/ssh/sshd_config.d/vpsshell.conf" in done.stdout  # not "skipped"
    lines = (host / "etc/pam.d/sshd").read_text().splitlines()
    skip = lines.index(
        "session [success=2 default=ignore] pam_succeed_if.so quiet user ingroup vpsshell"
    )
    assert "pam_motd.so" in lines[skip + 1] and "pam_motd.so" in lines[skip + 2]
    assert lines[skip - 1].startswith("# vpsshell:")
    again = admin(host, "install", "--sshd", "--quiet-login")
    assert "unchanged      /etc/pam.d/sshd" in again.stdout
    assert (host / "etc/pam.d/sshd").read_text().count("pam_succeed_if") == 1


@pytest.mark.skipif(shutil.which("mandb") is None, reason="man-db is not installed")
def test_the_man_index_is_updated_so_whatis_finds_the_pages(open_dir: Path) -> None:
    man_dir = open_dir / "man"
    (man_dir / "man8").mkdir(parents=True)
    shutil.copy(ROOT / "man/vpsshell-admin.8", man_dir / "man8")
    out, err = io.StringIO(), io.StringIO()
    update_man_index(AdminContext(DaemonConfig(), stdout=out, stderr=err), "/", str(man_dir))
    assert f"indexed        {man_dir} (mandb)" in out.getvalue(), err.getvalue()
    found = subprocess.run(
        ["whatis", "-M", str(man_dir), "vpsshell-admin"], capture_output=True, text=True
    )
    assert found.returncode == 0 and "vpsshell-admin (8)" in found.stdout, found


def test_every_name_man_db_knows_the_man_directory_by_is_indexed(open_dir: Path) -> None:
    # Debian: /usr/local/man -> share/man, first in root's manpath with an index of its own
    real = open_dir / "share/man"
    real.mkdir(parents=True)
    (open_dir / "man").symlink_to("share/man")
    link = f"{open_dir}/man"
    config = (
        f"MANDATORY_MANPATH\t\t\t{real}\n"
        f"MANPATH_MAP\t/usr/local/bin\t\t{link}\n"
        f"MANPATH_MAP\t/usr/local/bin\t\t{real}\n"
        f"MANDB_MAP\t{link}\t\t/var/cache/man/oldlocal\n"
        f"MANDB_MAP\t{real}\t/var/cache/man/local\n"
        "MANDB_MAP\t/usr/share/man\t\t/var/cache/man\n"
        "# MANDB_MAP\t/elsewhere\n"
    )
    assert man_dir_aliases(str(real), config) == [link]
    assert man_dir_aliases(link, config) == [str(real)]
    assert man_dir_aliases("/usr/share/man", config) == []
