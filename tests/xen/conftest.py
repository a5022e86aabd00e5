"""The Xen lab: a real Xen 4.17 hypervisor with a Debian dom0, booted in QEMU (TCG) for tests.

Tests marked ``xenlab`` run only with ``VPSSHELL_XENLAB=1``, which ``run-tests`` sets as root
when the machine can run the lab (``lab.preflight``: QEMU and the build tools, 3 GiB of free
memory): the lab is slow and heavy (QEMU TCG, about 2.2 GB of memory, about 5 minutes). The
other tests in this directory are fast unit tests and always run.

The ``xenlab`` session fixture, once per run:
1. builds wheels of this project and its dependencies (``.[xen]``) into a directory that the
   lab exports read-only to dom0 (virtio-9p, ``/mnt/host``), with the backend contract;
2. builds the lab's images (tests/xen/lab: from Debian packages only; cached in
   /var/tmp/vpsshell-xenlab, so only the first run, or one after a change to the lab, builds)
   and boots the lab, holding its lock (one run at a time), or reuses a lab that is already
   up with this share;
3. installs vpsshell into a venv in dom0 (dom0 has no network: wheels only);
4. writes the domain config files, the helper's config and policy, and creates two tenants.
It stops the lab at the end unless ``VPSSHELL_XENLAB_KEEP=1``. Timings of each step and of each
lab test are printed at the end of the run. dom0 also runs libvirtd with the libxl driver from
its boot: test_lab_3_libxl.py drives it from a helper outside the lab, over xen+ssh, once the
tests that run a helper in dom0 are done.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import Machine, ensure_images, preflight
from lab.machine import XEN_TCG_OPTIONS
from labkit import REPO, SHARE, SKIP_REASON, TIMINGS, Lab, _install, _setup, _timed


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xenlab: needs the Xen lab (VPSSHELL_XENLAB=1)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("VPSSHELL_XENLAB") == "1":
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "xenlab" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    began = time.monotonic()
    yield
    if "xenlab" in item.keywords and "contract_results" not in getattr(item, "fixturenames", ()):
        TIMINGS[f"test {item.name}"] = time.monotonic() - began  # (contract: timed in dom0)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TIMINGS:
        return
    terminalreporter.section("Xen lab timings")
    for label, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {label}")


@pytest.fixture(scope="session")
def xenlab() -> Iterator[Lab]:
    if os.environ.get("VPSSHELL_XENLAB") != "1":
        pytest.skip(SKIP_REASON)
    problem = preflight()
    if problem:
        pytest.fail(f"VPSSHELL_XENLAB=1, but {problem}")
    token = secrets.token_hex(8)

    def wheels() -> None:
        shutil.rmtree(SHARE, ignore_errors=True)
        SHARE.mkdir(parents=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "-w",
                str(SHARE / "wheels"),
                f"{REPO}[xen]",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        for contract in (
            REPO / "tests/backend_contract.py",
            Path(__file__).with_name("lab_contract.py"),
        ):
            shutil.copy(contract, SHARE / contract.name)
        (SHARE / "token").write_text(token)
        for path in [SHARE, *SHARE.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    images = _timed("lab images (built once, then from the cache)", ensure_images)
    machine = Machine(images, share=SHARE)
    with machine.lock():
        _timed("wheels of vpsshell[xen] on the host", wheels)
        lab = Lab(machine)
        if machine.running() and lab.run("cat /mnt/host/token", check=False).out.strip() != token:
            machine.stop()  # up, but without this run's share: boot it again
        if not machine.running():
            _timed("lab boot (QEMU to dom0 ssh)", machine.boot)
        try:
            assert lab.run("cat /mnt/host/token").out.strip() == token
            commandline = lab.run("xl info | grep '^xen_commandline'").out
            assert set(XEN_TCG_OPTIONS) <= set(commandline.split()), commandline
            _timed("install vpsshell[xen] into dom0", lambda: _install(lab))
            _timed("dom0 setup (users, config, policy)", lambda: _setup(lab))
            yield lab
        finally:
            if os.environ.get("VPSSHELL_XENLAB_KEEP") != "1":
                _timed("lab stop", machine.stop)
