"""One tenant flooding the helper with connections must not lock the others out.

Attacks, as the tenant vpst-carol with a client of her own: hundreds of connect() calls at
once, held open, right after a few parallel password guesses have filled the PAM threads
(which used to widen the window between the connection cap's check and its count); and a
tight connect/close loop. Meanwhile other tenants use ``vpsshell -c`` as usual and must get
their answers, and the audit log must not grow with the flood (refusals are folded into a few
records with a count).
"""

from __future__ import annotations

import json
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import DEFAULT_POLICY, Helper, run, start_and_wait
from rawclient import (
    CONNECT_CLOSE_LOOP,
    HOLD_CONNECTIONS,
    PARALLEL_REQUESTS,
    request,
    run_script,
    start_script,
)

pytestmark = pytest.mark.root

PASSWORD = "correct-horse-7"
GUESSING_POLICY = DEFAULT_POLICY + "allow user:vpst-carol poweroff,start web3 confirm=password\n"


@pytest.fixture
def limited(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A helper with the shipped connection limits (the harness's default lifts the rate),
    and a password-confirmed action for the attacker, vpst-carol."""
    subprocess.run(["chpasswd"], input=f"vpst-carol:{PASSWORD}\n", text=True, check=True)
    running = Helper(
        open_dir / "helper", policy=GUESSING_POLICY, connections_per_minute=120
    ).start()
    yield running
    running.stop()


def connect_records(helper: Helper, user: str) -> list[dict[str, object]]:
    uid = pwd.getpwnam(user).pw_uid
    return [r for r in helper.audit() if r.get("uid") == uid and r.get("action") == "connect"]


def test_a_burst_of_held_connections_leaves_other_tenants_served(limited: Helper) -> None:
    start_and_wait(limited, "vpst-alice", "web1")
    wrong = request("poweroff", domain="web3", password="wrong-guess")
    guesses = start_script(
        "vpst-carol", PARALLEL_REQUESTS, str(limited.socket), "8", "1", json.dumps([wrong])
    )
    attacker = start_script("vpst-carol", HOLD_CONNECTIONS, str(limited.socket), "900")
    try:
        assert attacker.stdout is not None
        held = json.loads(attacker.stdout.readline())["held"]
        assert held > 100, "the attack did not get its connections queued"
        for _ in range(3):  # while all of them are still open
            result = run("vpst-alice", limited, "status web1")
            assert result.code == 0, result
        # of all those, the helper serves no more than one user's share
        output, _ = attacker.communicate("\n", timeout=120)
        assert json.loads(output.splitlines()[-1])["answered"] <= 16  # max_connections_per_user
    finally:
        if attacker.poll() is None:
            attacker.kill()
        guesses.communicate(timeout=60)
    records = connect_records(limited, "vpst-carol")
    assert records, "the refused connections were not audited"
    assert len(records) <= 10, f"{len(records)} audit records for one burst"


def test_a_connect_close_loop_is_rate_limited_and_audited_folded(limited: Helper) -> None:
    flood = run_script("vpst-carol", CONNECT_CLOSE_LOOP, str(limited.socket), "5000")
    assert flood["connected"] > 1000
    result = run("vpst-alice", limited, "list")
    assert result.code == 0, result
    records = connect_records(limited, "vpst-carol")
    # refused as "too many new connections", one record per reason and fold window
    assert records and any("too many new connections" in str(r["message"]) for r in records)
    assert len(records) <= 10, f"{len(records)} audit records for 5000 connect/close"
    # the flooder's own next connection is refused too (and told why), the others' is not
    refused = run("vpst-carol", limited, "whoami")
    assert refused.code == 75 and "too many new connections" in refused.err
    assert run("vpst-bob", limited, "whoami").code == 0
