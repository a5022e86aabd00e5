"""A real OS user outside the tenants' group runs vpsshell: the kernel refuses the socket, and
the shell says that the account may not use vpsshell here, names the group only to the admin's
syslog, and exits 77 (denied), not 69 (helper unreachable)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import BIN, TEAM_GROUP, Helper, run
from syslogsink import SyslogSink

OUTSIDER = "vpst-alice"  # not in vpst-team, the socket's group in these tests
MEMBER = "vpst-carol"


@pytest.fixture
def group_only_helper(helper: Helper) -> Iterator[Helper]:
    """The helper's tenant socket as it is in production: 0660, group vpst-team (the harness
    opens it to everybody)."""
    os.chmod(helper.socket, 0o660)
    yield helper


def test_an_account_outside_the_group_is_told_it_may_not_use_vpsshell(
    group_only_helper: Helper,
) -> None:
    refused = run(OUTSIDER, group_only_helper, "list")
    assert refused.code == 77, refused
    assert "your account may not use vpsshell here (ask your provider)" in refused.err
    assert "Permission denied" not in refused.err
    assert (
        TEAM_GROUP not in refused.out + refused.err
    )  # the host's groups are not the tenant's business
    assert run(MEMBER, group_only_helper, "list").code == 0  # the group still gets in


def test_the_admin_log_names_the_account_and_the_group(
    group_only_helper: Helper, open_dir: Path
) -> None:
    sink = SyslogSink(open_dir)
    try:
        refused = subprocess.run(
            [*sink.with_dev_log(), "runuser", "-u", OUTSIDER, "--", "env", "-i",
             f"VPSSHELL_SOCKET={group_only_helper.socket}", str(BIN / "vpsshell"), "-c", "list"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert refused.returncode == 77, refused
        priority, text = sink.wait_for("may not use vpsshell")
    finally:
        sink.close()
    assert text.startswith("vpsshell[")
    assert f"{OUTSIDER} (uid " in text and f"not in group {TEAM_GROUP}" in text
    assert str(group_only_helper.socket) in text
    assert priority == (10 << 3) | 4  # authpriv.warning
