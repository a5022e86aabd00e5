"""Policy changes reach a running helper, and a broken policy denies everything."""

from __future__ import annotations

import os

from harness import DEFAULT_POLICY, Helper, run, wait_until


def code_of(helper: Helper, user: str, line: str) -> int:
    return run(user, helper, line).code


def test_edit_is_picked_up_without_restart(helper: Helper) -> None:
    assert code_of(helper, "vpst-bob", "status web2") == 77
    helper.write_policy("20-bob.policy", "allow user:vpst-bob @viewer web2\n")
    wait_until(lambda: code_of(helper, "vpst-bob", "status web2") == 0, 10, "grant picked up")
    os.unlink(helper.policy_dir / "20-bob.policy")
    wait_until(lambda: code_of(helper, "vpst-bob", "status web2") == 77, 10, "revoke picked up")
    assert helper.process is not None and helper.process.poll() is None


def test_syntax_error_denies_everything_until_fixed(helper: Helper) -> None:
    assert code_of(helper, "vpst-alice", "status web1") == 0
    helper.write_policy("30-broken.policy", "allow user:vpst-alice @operatr web1\n")
    wait_until(lambda: code_of(helper, "vpst-alice", "status web1") == 77, 10, "broken denies")
    assert run("vpst-alice", helper, "list --json").json() == []
    log = helper.log.read_text()
    assert "30-broken.policy:1" in log
    os.unlink(helper.policy_dir / "30-broken.policy")
    wait_until(lambda: code_of(helper, "vpst-alice", "status web1") == 0, 10, "fixed allows")


def test_world_writable_policy_file_denies_everything(helper: Helper) -> None:
    path = helper.policy_dir / "10-tenants.policy"
    os.chmod(path, 0o666)
    os.kill(helper.process.pid, 1)  # SIGHUP: mode changes do not change the fingerprint
    wait_until(lambda: code_of(helper, "vpst-alice", "status web1") == 77, 10, "0666 denies")
    os.chmod(path, 0o644)
    os.kill(helper.process.pid, 1)
    wait_until(lambda: code_of(helper, "vpst-alice", "status web1") == 0, 10, "0644 allows")


def test_editor_backups_and_hidden_files_are_ignored(helper: Helper) -> None:
    helper.write_policy("10-tenants.policy~", "allow user:vpst-bob @operator web1\n")
    helper.write_policy(".#20-x.policy", "allow user:vpst-bob @operator web1\n")
    helper.write_policy("20-x.policy.dpkg-old", "allow user:vpst-bob @operator web1\n")
    helper.admin("reload")
    assert code_of(helper, "vpst-bob", "status web1") == 77
    assert code_of(helper, "vpst-alice", "status web1") == 0


def test_admin_reload_reports_errors(helper: Helper) -> None:
    helper.write_policy("10-tenants.policy", DEFAULT_POLICY + "allow user:x start *\n")
    result = helper.admin("reload")
    assert any("10-tenants.policy:8" in error for error in result["errors"]), result
    reloads = [line for line in helper.audit() if line["action"] == "policy-reloaded"]
    assert reloads[-1]["result"] == "broken"
