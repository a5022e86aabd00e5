"""Fixtures of the end-to-end ring for tenants who log in over real SSH (``sshsite``).

``ssh_site`` builds the site once per test module, holding the lock that makes concurrent test
runs take turns; ``unlocked_sshd`` is the same sshd without the Match block (the control);
``ssh_helper`` is a fresh vpsshelld per test, which the client config points at for the test's
duration; ``ssh(user)`` opens a tenant's paramiko connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Helper
from sshclient import SshConnection, Sshd, shipped_snippet
from sshsite import SSH_GROUP, Connect, SshSite, site_for_module, site_helper


@pytest.fixture(scope="module")
def ssh_site(tenants: None) -> Iterator[SshSite]:
    """The launcher, the tenants and an sshd with the shipped Match block, per test module."""
    with site_for_module() as site:
        yield site


@pytest.fixture(scope="module")
def unlocked_sshd(ssh_site: SshSite) -> Iterator[Sshd]:
    """The same sshd without the shipped Match block: the control for the lockdown tests."""
    sshd = Sshd(
        ssh_site.root / "sshd-unlocked",
        shipped_snippet(
            SSH_GROUP, ssh_site.root / "sshd-unlocked" / "authorized_keys", match_block=False
        ),
    )
    for tenant in ssh_site.tenants.values():
        sshd.authorize(tenant.name, tenant.key)
    sshd.start()
    yield sshd
    sshd.stop()


@pytest.fixture
def ssh_helper(ssh_site: SshSite, open_dir: Path) -> Iterator[Helper]:
    """A fresh vpsshelld for this test; the client config points the login shells at it."""
    with site_helper(ssh_site, open_dir / "helper") as helper:
        yield helper


@pytest.fixture
def ssh(ssh_site: SshSite) -> Iterator[Connect]:
    """``ssh(user)`` opens a connection to the site's sshd (``sshd=`` another); closed after."""
    opened: list[SshConnection] = []

    def connect(user: str, sshd: Sshd | None = None) -> SshConnection:
        tenant = ssh_site.tenants[user]
        connection = SshConnection.open(sshd or ssh_site.sshd, user, tenant.key)
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()
