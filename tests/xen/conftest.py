"""The Xen lab: a real Xen 4.17 hypervisor with a Debian dom0, booted in QEMU (TCG) for tests.

Tests marked ``xenlab`` run only with ``VPSSHELL_XENLAB=1``, which ``run-tests`` sets as root
when the lab's scripts are there: the lab is slow and heavy (QEMU TCG, about 2.2 GB of memory,
about 5 minutes). The other tests in this directory are fast unit tests and always run.

The ``xenlab`` session fixture, once per run:
1. builds wheels of this project and its dependencies (``.[xen]``) into a directory that the
   lab exports read-only to dom0 (virtio-9p, ``/mnt/host``);
2. builds (cached) and boots the lab with ``build-and-boot.sh`` from ``VPSSHELL_XENLAB_DIR``
   (default: ``../shared/xenlab`` next to this repository), reusing a lab that is already up
   with this share; Xen gets ``xsave=0`` (see ``labkit.lab_script``: without it, dom0
   processes die now and then under TCG while domains are created and destroyed);
3. installs vpsshell into a venv in dom0 (dom0 has no network: wheels only);
4. writes the domain config files, the helper's config and policy, and creates two tenants.
It stops the lab at the end unless ``VPSSHELL_XENLAB_KEEP=1``. Timings of each step and of each
lab test are printed at the end of the run.
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
from labkit import (
    EXTRA_PKGS,
    LAB_DIR,
    REPO,
    SHARE,
    SKIP_REASON,
    TIMINGS,
    XEN_OPTION,
    Lab,
    _install,
    _lab_command,
    _setup,
    _ssh_args,
    _timed,
    lab_script,
)


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
    if os.geteuid() != 0:
        pytest.skip("the Xen lab needs root (debootstrap, QEMU, its own packages)")
    if not (LAB_DIR / "build-and-boot.sh").exists():
        pytest.fail(f"no lab script in {LAB_DIR} (set VPSSHELL_XENLAB_DIR)")
    script = lab_script(SHARE)
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
        shutil.copy(Path(__file__).parent / "lab_contract.py", SHARE / "lab_contract.py")
        (SHARE / "token").write_text(token)
        for path in [SHARE, *SHARE.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

    _timed("wheels of vpsshell[xen] on the host", wheels)
    env = {"XENLAB_SHARE": str(SHARE), "XENLAB_EXTRA_PKGS": EXTRA_PKGS}
    _timed("lab build (cached after the first)", lambda: _lab_command(script, "build", env=env))
    lab = Lab(script, _ssh_args())
    running = subprocess.run([str(script), "status"], capture_output=True, text=True).returncode
    if running == 0 and lab.run("cat /mnt/host/token", check=False).out.strip() != token:
        _lab_command(script, "stop")  # up, but without this run's share: boot it again
        running = 1
    if running != 0:
        _timed("lab boot (QEMU to dom0 ssh)", lambda: _lab_command(script, "boot", env=env))
    try:
        assert lab.run("cat /mnt/host/token").out.strip() == token
        commandline = lab.run("xl info | grep '^xen_commandline'").out
        assert XEN_OPTION in commandline.split(), commandline
        _timed("install vpsshell[xen] into dom0", lambda: _install(lab))
        _timed("dom0 setup (users, config, policy)", lambda: _setup(lab))
        yield lab
    finally:
        if os.environ.get("VPSSHELL_XENLAB_KEEP") != "1":
            _timed("lab stop", lambda: _lab_command(script, "stop"))
