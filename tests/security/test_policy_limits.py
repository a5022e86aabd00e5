"""A large policy stays in force, and no admin change can turn it into a deny-all.

A policy over its limits (rules, files, bytes) is broken, and a broken policy denies every
tenant. The rule limit used to be 10,000, below what a big host or a gateway needs; and
``vpsshell-admin`` validated a change without the directory's limits on files and bytes, so a
``grant`` or ``edit`` that added a file to a full directory was installed and the helper then
denied everyone. Here a running helper holds a policy exactly at a limit while an admin
changes it: the change is refused (exit 1, nothing written) and tenants keep their access.
The rule-limit test builds a policy of exactly ``MAX_RULES`` (a million) rules: about 20 s
of loading between the helper and ``vpsshell-admin`` (bench/README.md, policy_scale.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEFAULT_POLICY, Helper, Result, run, vpsshell_admin, wait_until

from vpsshell.policy.model import MAX_FILE_BYTES, MAX_FILES, MAX_RULES

pytestmark = pytest.mark.root

MANAGED = "90-vpsshell-admin.policy"
DEFAULT_RULES = sum(1 for line in DEFAULT_POLICY.splitlines() if line.startswith(("allow", "deny")))


def admin(helper: Helper, *argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
    return vpsshell_admin(helper, *argv, stdin=stdin, env=env, timeout=600)


def snapshot(helper: Helper) -> dict[str, bytes]:
    """Every policy file the helper reads, and any file an admin tool left behind."""
    names = set(os.listdir(helper.policy_dir)) - {".vpsshell-admin.lock"}
    return {name: (helper.policy_dir / name).read_bytes() for name in sorted(names)}


def tenants_keep_their_access(helper: Helper) -> None:
    assert run("vpst-alice", helper, "status web1").code == 0
    assert run("vpst-carol", helper, "status db1").code == 0  # a group grant
    assert run("vpst-bob", helper, "status web2").code == 77  # and no more than before
    assert "policy is broken" not in helper.log.read_text()
    assert not [r for r in helper.audit() if r.get("result") == "broken"]


def loaded(helper: Helper, rules: int) -> bool:
    log = helper.log.read_text()
    if "policy is broken" in log:
        raise AssertionError(f"the helper found the policy broken: {log[-2000:]}")
    return f"policy loaded: {rules} rule(s)" in log


@pytest.fixture
def full_of_rules(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A running helper whose policy holds exactly MAX_RULES rules."""
    running = Helper(open_dir / "helper").start()
    try:
        generated = MAX_RULES - DEFAULT_RULES
        line = "allow user:t{0:07d} @operator t{0:07d}-web\n"
        # as a provisioning system writes them: a rule per tenant, files under the size limit
        per_file = MAX_FILE_BYTES // len(line.format(0))
        for number, first in enumerate(range(0, generated, per_file)):
            last = min(first + per_file, generated)
            text = "".join(line.format(i) for i in range(first, last))
            running.write_policy(f"20-generated-{number:02d}.policy", text)
        wait_until(
            lambda: loaded(running, MAX_RULES),
            180,
            "the helper never loaded the policy of exactly MAX_RULES rules",
            interval=0.5,
        )
        yield running
    finally:
        running.stop()


def test_a_grant_that_would_cross_the_rule_limit_is_refused_and_nothing_changes(
    full_of_rules: Helper,
) -> None:
    helper = full_of_rules
    # "well past realistic sizes": a gateway in front of many hosts has some 150,000 rules
    assert MAX_RULES >= 5 * 150_000
    tenants_keep_their_access(helper)
    before = snapshot(helper)
    result = admin(helper, "policy", "grant", "user:vpst-bob", "@operator", "web2")
    assert result.code == 1, result
    assert f"{helper.policy_dir}/{MANAGED}:4: too many rules (limit {MAX_RULES})" in result.out
    assert result.out.endswith("1 error(s): nothing was installed\n")
    assert snapshot(helper) == before
    assert not [r for r in helper.audit() if r.get("action") == "admin:reload"]
    tenants_keep_their_access(helper)


@pytest.fixture
def full_of_files(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A running helper whose policy directory holds exactly MAX_FILES policy files."""
    helper = Helper(open_dir / "helper")
    for number in range(MAX_FILES - 1):
        helper.write_policy(
            f"20-tenant-{number:04d}.policy", f"allow user:t{number} log w{number}\n"
        )
    running = helper.start()
    try:
        assert f"rule(s) from {MAX_FILES} file(s)" in running.log.read_text()
        yield running
    finally:
        running.stop()


def test_a_grant_or_edit_that_would_add_a_file_past_the_limit_is_refused(
    full_of_files: Helper, open_dir: Path
) -> None:
    helper = full_of_files
    tenants_keep_their_access(helper)
    before = snapshot(helper)
    refusal = f"{helper.policy_dir}: more than {MAX_FILES} policy files"
    granted = admin(helper, "policy", "grant", "user:vpst-bob", "@operator", "web2")
    assert granted.code == 1, granted
    assert refusal in granted.out and "nothing was installed" in granted.out
    editor = open_dir / "editor.sh"
    editor.write_text('#!/bin/sh\necho "allow user:vpst-bob @viewer web2" >> "$1"\n')
    editor.chmod(0o755)
    # the admin would apply if asked; the copy with errors can only be edited again or discarded
    edited = admin(
        helper, "policy", "edit", "95-local.policy", stdin="a\n", env={"EDITOR": str(editor)}
    )
    assert edited.code == 1, edited
    assert refusal in edited.out and "discarded; nothing was changed" in edited.out
    assert snapshot(helper) == before
    tenants_keep_their_access(helper)
    # an edit of a file that is already there is still possible
    edited = admin(
        helper, "policy", "edit", "10-tenants.policy", stdin="a\n", env={"EDITOR": str(editor)}
    )
    assert edited.code == 0, edited
    wait_until(lambda: run("vpst-bob", helper, "status web2").code == 0, 10, "bob's grant")
    assert run("vpst-alice", helper, "status web1").code == 0
