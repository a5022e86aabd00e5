"""The backend contract against real Xen: ``lab_contract.py`` run inside dom0, one test per check.

Runs before the tenant tests (test_lab_2_tenants.py), while no helper is running in dom0: the
checks open their own backend and would otherwise compete with the helper's console hubs for
the console locks. Needs ``VPSSHELL_XENLAB=1``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from backend_contract import CHECKS
from labkit import CONFIG_DIR, TIMINGS, VENV, Lab

pytestmark = pytest.mark.xenlab


@pytest.fixture(scope="module")
def contract_results(xenlab: Lab) -> dict[str, dict[str, Any]]:
    run = xenlab.run(
        f"cd /mnt/host && {VENV}/bin/python lab_contract.py {CONFIG_DIR} "
        "2>/var/log/vpsshell-lab-contract.log",
        timeout=3600,
        check=False,
    )
    results = {}
    for line in run.out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["check"]] = result
            TIMINGS[f"contract in dom0: {result['check']}"] = float(result["seconds"])
    return results


@pytest.mark.parametrize("check", list(CHECKS))
def test_backend_contract_in_dom0(check: str, contract_results: dict[str, dict[str, Any]]) -> None:
    result = contract_results.get(check)
    assert result is not None, f"{check} did not run (see /var/log/vpsshell-lab-contract.log)"
    if result["outcome"] == "skipped":
        pytest.skip(result["error"])
    assert result["outcome"] == "passed", result["error"]
