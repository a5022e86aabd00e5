"""The backend contract against real Xen: ``lab_contract.py`` run inside dom0, one test per check.

Runs before the tenant tests (test_lab_2_tenants.py), while no helper is running in dom0: the
checks open their own backend and would otherwise compete with the helper's console hubs for
the console locks. Needs ``VPSSHELL_XENLAB=1``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from labkit import CONFIG_DIR, TIMINGS, VENV, Lab

pytestmark = pytest.mark.xenlab


def _check_names() -> list[str]:
    """The ``@check`` functions of lab_contract.py, in order (read, not imported: it needs
    the backend's dependencies, which only dom0 is sure to have)."""
    tree = ast.parse(Path(__file__).with_name("lab_contract.py").read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "check" for d in node.decorator_list)
    ]


CHECK_NAMES = _check_names()


@pytest.fixture(scope="module")
def contract_results(xenlab: Lab) -> dict[str, dict[str, Any]]:
    run = xenlab.run(
        f"cd /tmp && {VENV}/bin/python /mnt/host/lab_contract.py {CONFIG_DIR} "
        "2>/var/log/vpsshell-lab-contract.log",
        timeout=1800,
        check=False,
    )
    results = {}
    for line in run.out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["check"]] = result
            TIMINGS[f"contract in dom0: {result['check']}"] = float(result["seconds"])
    return results


@pytest.mark.parametrize("check", CHECK_NAMES)
def test_backend_contract_in_dom0(check: str, contract_results: dict[str, dict[str, Any]]) -> None:
    result = contract_results.get(check)
    assert result is not None, f"{check} did not run (see /var/log/vpsshell-lab-contract.log)"
    assert result["ok"], result["error"]
