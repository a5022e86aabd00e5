"""``confirm=password`` under attack: parallel guesses, a slow PAM, a revocation mid-check.

The tenant vpst-carol may power off web3 with her password. An attacker with her key but not
her password fires guesses over many connections at once: they must get exactly
``password_attempts`` PAM checks per lockout window, a right password after that must not
work, and other tenants must not wait behind the guesses (each wrong guess holds a PAM thread
for pam_unix's two-second delay). And a grant revoked while PAM is checking the password must
stop the action.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEFAULT_POLICY, Helper, run, start_and_wait, state_of, wait_until
from rawclient import PARALLEL_REQUESTS, request, run_script, start_script

pytestmark = pytest.mark.root

PASSWORD = "correct-horse-7"
CONFIRM_POLICY = DEFAULT_POLICY + (
    "allow user:vpst-carol start web3\nallow user:vpst-carol poweroff web3 confirm=password\n"
)
WRONG = request("poweroff", domain="web3", password="wrong-guess")
RIGHT = request("poweroff", domain="web3", password=PASSWORD)


@pytest.fixture
def confirming(open_dir: Path, tenants: None) -> Iterator[Helper]:
    subprocess.run(["chpasswd"], input=f"vpst-carol:{PASSWORD}\n", text=True, check=True)
    running = Helper(open_dir / "helper", policy=CONFIRM_POLICY).start()
    start_and_wait(running, "vpst-carol", "web3")
    yield running
    running.stop()


def pam_checked(helper: Helper) -> list[dict[str, object]]:
    """Audit records of guesses that PAM actually checked and refused."""
    return [
        r
        for r in helper.audit()
        if r.get("action") == "poweroff" and str(r.get("reason", "")).startswith("password not")
    ]


def test_parallel_guesses_get_only_the_allowed_attempts(confirming: Helper) -> None:
    guesses = run_script(
        "vpst-carol", PARALLEL_REQUESTS, str(confirming.socket), "16", "3", json.dumps([WRONG])
    )
    kinds = [r["reply"]["error"]["kind"] for r in guesses["replies"] if r["reply"]]
    assert len(kinds) == 48 and "confirm" in kinds and "temporary" in kinds
    assert len(pam_checked(confirming)) == 3  # password_attempts, however many in parallel
    # the lockout holds against the right password too
    right = run_script(
        "vpst-carol", PARALLEL_REQUESTS, str(confirming.socket), "1", "1", json.dumps([RIGHT])
    )
    assert right["replies"][0]["reply"]["error"]["kind"] == "temporary"
    assert state_of(confirming, "vpst-carol", "web3") == "running"
    assert PASSWORD not in confirming.audit_log.read_text()


def test_guesses_do_not_delay_other_tenants(confirming: Helper) -> None:
    attack = start_script(
        "vpst-carol", PARALLEL_REQUESTS, str(confirming.socket), "16", "2", json.dumps([WRONG])
    )
    assert attack.stdout is not None
    json.loads(attack.stdout.readline())  # the guesses are on their way
    for _ in range(3):
        assert run("vpst-alice", confirming, "list").code == 0
    served = time.monotonic()
    output, _ = attack.communicate(timeout=120)
    replies = json.loads(output.splitlines()[-1])["replies"]
    checked = [r["at"] for r in replies if r["reply"] and r["reply"]["error"]["kind"] == "confirm"]
    # alice was served while PAM was still busy with the first guess it checked
    assert checked and served < min(checked)


SLOW_PAM = """\
auth required pam_exec.so quiet {script}
@include common-auth
@include common-account
"""
WAIT_FOR_GO = """\
#!/bin/sh
touch {dir}/waiting
i=0
while [ ! -e {dir}/go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
exit 0
"""


@pytest.fixture
def slow_pam(open_dir: Path) -> Iterator[tuple[str, Path]]:
    """A PAM service whose password check waits until the test says go."""
    gate = open_dir / "gate"
    gate.mkdir()
    script = open_dir / "wait-for-go"
    script.write_text(WAIT_FOR_GO.format(dir=gate))
    os.chmod(script, 0o755)
    service = f"vpsshell-slow-{os.getpid()}"
    pam_file = Path("/etc/pam.d") / service
    pam_file.write_text(SLOW_PAM.format(script=script))
    yield service, gate
    pam_file.unlink()


def test_a_grant_revoked_during_the_password_check_stops_the_action(
    open_dir: Path, tenants: None, slow_pam: tuple[str, Path]
) -> None:
    service, gate = slow_pam
    subprocess.run(["chpasswd"], input=f"vpst-carol:{PASSWORD}\n", text=True, check=True)
    helper = Helper(
        open_dir / "helper", policy=CONFIRM_POLICY, extra_config=f'pam_service = "{service}"'
    ).start()
    try:
        start_and_wait(helper, "vpst-carol", "web3")
        poweroff = start_script(
            "vpst-carol", PARALLEL_REQUESTS, str(helper.socket), "1", "1", json.dumps([RIGHT])
        )
        wait_until(lambda: (gate / "waiting").exists(), 20, "PAM never started the check")
        helper.write_policy("10-tenants.policy", DEFAULT_POLICY)  # carol's grants are gone
        helper.admin("reload")
        (gate / "go").touch()
        output, _ = poweroff.communicate(timeout=60)
        reply = json.loads(output.splitlines()[-1])["replies"][0]["reply"]
        assert reply["error"]["kind"] == "denied"
        assert state_of(helper, "vpst-alice", "web1") in ("running", "shutoff")  # helper fine
        record = [r for r in helper.audit() if r.get("action") == "poweroff"][-1]
        assert record["decision"] == "deny"
    finally:
        helper.stop()
    # web3 was never powered off: the sim keeps its state across helper restarts
    helper.write_policy("10-tenants.policy", CONFIRM_POLICY)
    helper.start()
    try:
        assert state_of(helper, "vpst-carol", "web3") == "running"
    finally:
        helper.stop()
