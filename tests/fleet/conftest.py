"""Fixtures of the test fleet (``fleetlab``): a started lab per test module.

``fleet`` has four hosts: node1 and node2 run QEMU (TLS), node3 is a test-driver host over TLS
with four domains, node4 a test-driver host reached over SSH with three (the cheapest way to
have the SSH transport: no guest to boot). It needs root and nothing else; a missing tool
fails the lab with the package to install (run-tests installs them all).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fleetlab import FleetLab, HostSpec
from harness import is_root

FLEET = (
    HostSpec("qemu"),
    HostSpec("qemu"),
    HostSpec("test", domains=4),
    HostSpec("test", "ssh", domains=3),
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[FleetLab]:
    """The started fleet (hosts ``fleet.host("node1")``...); removed after the module."""
    if not is_root():
        pytest.skip(
            "needs root: the test fleet makes network namespaces, a bridge, OS users and "
            "libvirtd instances"
        )
    with FleetLab(FLEET) as lab:
        print(f"test fleet in slot {lab.plan.slot} started in {lab.start_seconds:.1f} s")
        yield lab
