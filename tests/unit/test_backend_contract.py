"""The backend contract (tests/backend_contract.py) on the fast backends: sim and libvirt.

``sim`` runs with tiny boot times; ``libvirt`` runs on two libvirt test-driver hosts
(``tests/fixtures/libvirt/node1.xml``, ``node2.xml``), which are in-process and fast and have
no consoles. The same checks run on a real QEMU guest (tests/e2e/test_qemu_guest.py) and on
real Xen (tests/xen/test_lab_1_backend.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from backend_contract import CHECKS, Console, Domain, NotApplicable, Profile, run_check

from vpsshell.backends.sim_guest import KERNEL_RELEASE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"

# name -> (vcpus, memory_mib, host label); the same three domains on both backends
DOMAINS = {"web1": (1, 512, "node1"), "db1": (2, 2048, "node2"), "web2": (2, 1024, "node1")}


def sim_profile() -> Profile:
    # the sim backend has one host label: db1's differs only on multi-host backends
    return Profile(
        name="sim",
        table={
            "type": "sim",
            "host": "node1",
            "domains": [
                {
                    "name": name,
                    "vcpus": vcpus,
                    "memory_mib": memory,
                    "boot_seconds": 0.05,
                    "shutdown_seconds": 0.05,
                }
                for name, (vcpus, memory, _host) in DOMAINS.items()
            ],
        },
        domains=tuple(Domain(n, v, m, "node1") for n, (v, m, _h) in DOMAINS.items()),
        boot_seconds=5,
        poll_seconds=0.01,
        console=Console(
            wake=b"\r",
            prompt=b"login: ",
            login=((b"root\r", b"Password: "), (b"secret\r", b"$ ")),
            command=b"uname -r\r",
            answer=KERNEL_RELEASE.encode(),
            wake_every=0.05,
        ),
        check_seconds=30,
    )


def libvirt_profile() -> Profile:
    return Profile(
        name="libvirt test driver",
        table={
            "type": "libvirt",
            "timeout_seconds": 5,
            "hosts": [
                {"name": "node1", "uri": f"test://{FIXTURES / 'node1.xml'}"},
                {"name": "node2", "uri": f"test://{FIXTURES / 'node2.xml'}"},
            ],
        },
        domains=tuple(Domain(n, v, m, h) for n, (v, m, h) in DOMAINS.items()),
        boot_seconds=5,
        poll_seconds=0.01,
        console=None,  # the test driver has none: tests/e2e/test_qemu_guest.py
        reports_reboots=False,  # the test driver sends no reboot events
        check_seconds=30,
    )


# Known differences of sim from Xen and libvirt, kept visible; strict, so each fails once sim
# is fixed (then remove it here).
SIM_DIFFERS: dict[str, str] = {}  # checks the sim is known to fail, with why


def _cases() -> list[object]:
    cases: list[object] = []
    for kind in ("sim", "libvirt"):
        for name in CHECKS:
            marks = []
            if kind == "sim" and name in SIM_DIFFERS:
                marks.append(pytest.mark.xfail(reason=SIM_DIFFERS[name], strict=True))
            cases.append(pytest.param(kind, name, marks=marks, id=f"{kind}-{name}"))
    return cases


@pytest.mark.parametrize(("kind", "check"), _cases())
def test_backend_contract(kind: str, check: str, tmp_path: Path) -> None:
    if kind == "libvirt":
        pytest.importorskip("libvirt", reason="libvirt-python is not installed (vpsshell[libvirt])")
    profile = sim_profile() if kind == "sim" else libvirt_profile()
    try:
        asyncio.run(run_check(profile, check, str(tmp_path / "state")))
    except NotApplicable as exc:
        pytest.skip(str(exc))
