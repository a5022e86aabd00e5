"""``vpsshelld --check-config`` says when the policy has no rules: valid, but every request of
every tenant is denied, which is rarely what an admin who just installed means."""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness import BIN, Helper


def check_config(helper: Helper) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "vpsshelld"), "--config", str(helper.config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_warns_about_a_policy_without_rules(open_dir: Path) -> None:
    helper = Helper(open_dir / "helper", policy="# vpsshell policy; see vpsshell-policy(5).\n")
    empty = check_config(helper)
    assert empty.returncode == 0, empty
    assert "(0 policy rule(s))" in empty.stdout
    assert f"warning: no rules in {helper.policy_dir}: all denied" in empty.stderr
    helper.write_policy("10-tenants.policy", "allow user:vpst-alice @viewer web1\n")
    one = check_config(helper)
    assert (one.returncode, one.stderr) == (0, ""), one
