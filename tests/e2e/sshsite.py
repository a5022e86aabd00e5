"""The SSH site of the end-to-end tests: what an admin sets up for tenants, built for a test.

``build_site()`` does what ``vpsshell-admin install --sshd`` and the README's "Serving tenants
over SSH" do, in a private directory under /run: the isolated login-shell launcher (registered
in /etc/shells meanwhile), the tenants' group and accounts (``vpss-*``: their own, so other
tests' ``vpst-*`` users keep their shell), their homes and paramiko keys, and a private sshd
with the shipped Match block (``sshclient.Sshd``). ``ClientConfig`` points the client config,
/etc/vpsshell/vpsshell.toml, at a test's helper: sshd passes no VPSSHELL_SOCKET, so that file
is how a login shell finds the helper. Whatever /etc/shells and /etc/vpsshell held before is put
back afterwards, and test runs sharing a machine take turns (``LOCK``).
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from harness import TEAM_GROUP, Helper, wait_until
from sshclient import (
    SFTP_SERVER,
    SSHD,
    SshConnection,
    Sshd,
    processes_of,
    shipped_snippet,
)

from vpsshell import paths
from vpsshell.admin.launcher import install_launcher

SSH_GROUP = "vpss-tenants"
ALICE = "vpss-alice"
CAROL = "vpss-carol"
SSH_POLICY = f"""\
allow user:{ALICE} @operator web1 web2 stubborn
allow user:{CAROL} @operator db1
"""
SHELLS = Path("/etc/shells")
LOCK = Path("/run/vpsshell-e2e-ssh.lock")


class ClientConfig:
    """``/etc/vpsshell/vpsshell.toml`` for the tests' duration; ``restore`` puts back what was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created_dir = not path.parent.exists()
        self.original = path.read_bytes() if path.exists() else None
        self.original_mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644

    def point_at(self, socket: Path) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.e2e")
        tmp.write_text(
            f'# written by vpsshell\'s SSH tests for their duration\nsocket = "{socket}"\n'
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.path)

    def restore(self) -> None:
        if self.original is not None:
            self.path.write_bytes(self.original)
            os.chmod(self.path, self.original_mode)
            return
        self.path.unlink(missing_ok=True)
        if self.created_dir:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass  # something else was put there meanwhile: not ours to remove


@dataclass
class SshTenant:
    name: str
    uid: int
    home: Path
    key: paramiko.PKey


@dataclass
class SshSite:
    root: Path
    launcher: Path
    sshd: Sshd
    tenants: dict[str, SshTenant]
    client_config: ClientConfig


def register_shell(launcher: Path) -> None:
    text = SHELLS.read_text()
    prefix = "" if text.endswith("\n") or not text else "\n"
    SHELLS.write_text(f"{text}{prefix}{launcher}\n")


def unregister_shell(launcher: Path) -> None:
    lines = SHELLS.read_text().splitlines(keepends=True)
    SHELLS.write_text("".join(line for line in lines if line.rstrip("\n") != str(launcher)))


def create_tenant(name: str, home_root: Path, launcher: Path) -> SshTenant:
    home = home_root / name
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "-M", "-d", str(home), "-s", str(launcher), "-G", SSH_GROUP, name],
            check=True,
        )
    else:  # left by an earlier run with VPSSHELL_KEEP_USERS
        subprocess.run(
            ["usermod", "-d", str(home), "-s", str(launcher), "-G", SSH_GROUP, name], check=True
        )
    entry = pwd.getpwnam(name)
    home.mkdir(mode=0o750)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return SshTenant(name, entry.pw_uid, home, paramiko.ECDSAKey.generate())


def retire_tenants(site: SshSite) -> None:
    """Remove the accounts (with VPSSHELL_KEEP_USERS: take their login shell away)."""
    keep = bool(os.environ.get("VPSSHELL_KEEP_USERS"))
    lingering = []
    for tenant in site.tenants.values():

        def gone(uid: int = tenant.uid) -> bool:
            return not processes_of(uid)

        try:
            wait_until(gone, 15, f"processes of {tenant.name} outlived their SSH sessions")
        except AssertionError as exc:
            lingering.append(str(exc))
        if keep:
            subprocess.run(["usermod", "-s", "/bin/false", "-d", "/nonexistent", tenant.name])
        else:
            subprocess.run(["userdel", tenant.name], check=False, capture_output=True)
    if not keep:
        subprocess.run(["groupdel", SSH_GROUP], check=False, capture_output=True)
    assert not lingering, lingering


@contextmanager
def exclusive(lock: Path, timeout: float) -> Iterator[None]:
    """Hold ``lock`` (flock): one test run at a time edits /etc/shells, the client config and
    the ``vpss-*`` accounts, even when several runs share this machine."""
    with lock.open("a") as handle:

        def taken() -> bool:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(taken, timeout, f"another test run kept {lock} (its SSH tests)")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def build_site() -> Iterator[SshSite]:
    """Build the site, yield it, take it all down again (call it holding ``LOCK``)."""
    # under /run, not /tmp: sshd refuses keys below a world-writable directory (StrictModes)
    root = Path(tempfile.mkdtemp(prefix="vpsshell-ssh-", dir="/run"))
    try:
        os.chmod(root, 0o755)
        launcher = root / "bin" / "vpsshell"
        launcher.parent.mkdir(mode=0o755)
        install_launcher(str(launcher))
        (root / "home").mkdir(mode=0o755)
        sshd = Sshd(root / "sshd", shipped_snippet(SSH_GROUP, root / "sshd" / "authorized_keys"))
        site = SshSite(root, launcher, sshd, {}, ClientConfig(Path(paths.CLIENT_CONFIG)))
        register_shell(launcher)
        try:
            try:
                grp.getgrnam(SSH_GROUP)
            except KeyError:
                subprocess.run(["groupadd", SSH_GROUP], check=True)
            for name in (ALICE, CAROL):
                site.tenants[name] = create_tenant(name, root / "home", launcher)
                sshd.authorize(name, site.tenants[name].key)
            sshd.start()
            yield site
        finally:
            sshd.stop()
            site.client_config.restore()
            unregister_shell(launcher)
            retire_tenants(site)
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: ``connect(user, sshd=None)``: a tenant's connection (the ``ssh`` fixture)
Connect = Callable[..., SshConnection]


@contextmanager
def site_for_module() -> Iterator[SshSite]:
    """A site for a test module, built while holding the lock that makes runs take turns;
    skips when sshd is not installed."""
    import pytest

    if not os.path.exists(SSHD) or not os.path.exists(SFTP_SERVER):
        pytest.skip("openssh-server is not installed")
    with exclusive(LOCK, 300), build_site() as site:
        yield site


@contextmanager
def site_helper(
    site: SshSite,
    root: Path,
    policy: str = SSH_POLICY,
    extra_config: str = "",
    extra_limits: str = "",
) -> Iterator[Helper]:
    """A fresh vpsshelld in ``root``, which the site's client config points the login shells
    at until it stops; its socket as installed (only the tenants' group may connect)."""
    helper = Helper(root, policy=policy, extra_config=extra_config, extra_limits=extra_limits)
    helper.config.write_text(
        helper.config.read_text().replace(
            f'socket_group = "{TEAM_GROUP}"', f'socket_group = "{SSH_GROUP}"'
        )
    )
    helper.start()
    os.chmod(helper.socket, 0o660)
    site.client_config.point_at(helper.socket)
    try:
        yield helper
    finally:
        helper.stop()
        site.client_config.restore()  # outside these tests, the host's own file (or none) again
