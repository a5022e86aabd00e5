"""``vpsshell-admin`` asks the running helper which domains exist: ``policy check --strict`` and
``policy grant`` warn about a domain the backend does not know, unless it is said to be planned.

The helper is a real ``vpsshelld`` with the sim backend (web1..web4, db1, stubborn); the policy
change reaches it by SIGHUP, as an admin's hand edit would.
"""

from __future__ import annotations

import signal

from harness import Helper, vpsshell_admin

TYPO = "allow user:vpst-bob @operator no-such-vm\n"
CLEAN = "allow user:vpst-alice @operator web1 web2\nallow group:vpst-team @viewer db1\n"


def test_check_strict_names_a_domain_the_backend_lacks(helper: Helper) -> None:
    helper.write_policy("10-tenants.policy", CLEAN)
    clean = vpsshell_admin(helper, "policy", "check", "--strict")
    assert (clean.code, clean.err) == (0, ""), clean
    helper.write_policy("30-typo.policy", TYPO)
    assert helper.process is not None
    helper.process.send_signal(signal.SIGHUP)
    result = vpsshell_admin(helper, "policy", "check", "--strict")
    assert result.code == 1, result
    assert f"{helper.policy_dir}/30-typo.policy:1: warning: no domain 'no-such-vm'" in result.out
    assert "web1" not in result.out and "db1" not in result.out  # the sim's domains are known
    planned = vpsshell_admin(helper, "policy", "check", "--strict", "--planned", "no-such-vm")
    assert planned.code == 0, planned
    assert "no-such-vm" not in planned.out
    audit = [r["action"] for r in helper.audit() if r.get("socket") == "admin"]
    assert audit == ["admin:domains"] * 3


def test_check_strict_without_a_helper_says_domains_were_not_checked(helper: Helper) -> None:
    helper.stop()
    helper.write_policy("30-typo.policy", TYPO)
    result = vpsshell_admin(helper, "policy", "check", "--strict")
    assert "domain names were not checked" in result.err, result
    assert "no-such-vm" not in result.out


def test_grant_warns_about_an_unknown_domain_unless_planned(helper: Helper) -> None:
    granted = vpsshell_admin(helper, "policy", "grant", "user:vpst-bob", "@viewer", "web9", "web2")
    assert granted.code == 0, granted
    assert "warning: no domain 'web9' on the backend" in granted.err
    assert "'web2'" not in granted.err
    planned = vpsshell_admin(
        helper, "policy", "grant", "user:vpst-bob", "@viewer", "web8", "--planned"
    )
    assert planned.code == 0, planned
    assert "web8" not in planned.err
    assert "web8" in (helper.policy_dir / "90-vpsshell-admin.policy").read_text()
