"""Xen through libvirt's libxl driver: a gateway outside the lab drives dom0's libvirtd.

dom0 runs libvirtd with the libxl driver (started at its boot: the lab's
``files/dom0/etc/xenlab/start.d/50-libvirtd``). The gateway is a real ``vpsshelld`` on this
machine, outside the lab, with the libvirt backend and one host, ``xen1``, whose URI is the
lab's ``Machine.libvirt_uri()``: ``xen+ssh://`` through the lab's forwarded ssh port, as root
with the lab's key, ``virt-ssh-helper`` at dom0's end; dom0's host key is checked against the
known_hosts file the lab writes at boot from its image's host key (libvirt's ssh transport
takes no known_hosts file, so the URI's ``command=`` names a small ssh wrapper that does).
The guest ``lx-web1`` is the lab's PV guest (its xl config converted by libvirt, renamed) defined
through that URI, as an admin would. ``vpst-alice`` may operate it, ``vpst-bob`` nothing; each
command is the real ``vpsshell -c`` as that user, the console a real pty. The tests run in order
and share the guest: status, start and console, reboot, shutdown, events.

What the libxl driver does differently from the QEMU driver (libvirt 9.0, Xen 4.17):
- a reboot (ours or the guest's) is a new Xen domain: libvirt sends no reboot event but
  "started" (new domain id) and then "stopped, shutdown" (the old id), in that order; the
  console's stream ends with the old domain and must be opened again;
- ``reset`` and ``send-key`` (so ``sysrq``) are not supported;
- Domain-0 is listed as a running domain.
Needs ``VPSSHELL_XENLAB=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
from harness import Helper, console_as, libvirt_backend, run, wait_until
from labkit import TIMINGS, Lab, _timed

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

pytestmark = pytest.mark.xenlab

HOST = "xen1"
GUEST = "lx-web1"
GUEST_UUID = "7a3c1e52-0d4b-4f6e-9a28-5b1c0e9d7f31"
OWNER, STRANGER = "vpst-alice", "vpst-bob"
BOOT_SECONDS = 180  # the guest boots in about 4 s here; the machine may be busy
BACKEND_TIMEOUT_SECONDS = 60  # one libvirt call over ssh, connecting included
POLICY = f"allow user:{OWNER} @operator {GUEST}\n"


def define_guest(lab: Lab, uri: str) -> None:
    """The lab's PV guest (/etc/xen/xenlab-domu.cfg) as libvirt converts it, renamed, defined
    over ``uri`` (a leftover of an interrupted run removed first)."""
    native = lab.run("cat /etc/xen/xenlab-domu.cfg").out
    conn = libvirt.open(uri)
    try:
        remove_guest(conn)
        domain = ElementTree.fromstring(conn.domainXMLFromNative("xen-xl", native, 0))
        for tag, value in (("name", GUEST), ("uuid", GUEST_UUID)):
            element = domain.find(tag)
            assert element is not None, f"no <{tag}> in libvirt's domain XML"
            element.text = value
        conn.defineXML(ElementTree.tostring(domain, encoding="unicode"))
    finally:
        conn.close()


def remove_guest(conn: Any) -> None:
    try:
        dom = conn.lookupByName(GUEST)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    if dom.isActive():
        dom.destroy()
    dom.undefine()


@pytest.fixture(scope="module")
def xen_host(xenlab: Lab) -> Iterator[str]:
    """dom0's libvirtd answering, the guest defined on it (shut off); its URI."""
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)  # raised, not printed
    machine = xenlab.machine
    answered = xenlab.run("virsh -q -c xen:///system version", check=False)
    assert answered.code == 0, (
        f"dom0's libvirtd does not answer: {answered}\n"
        + xenlab.run("tail -20 /var/log/libvirt/libvirtd.log", check=False).out
    )
    started = re.search(r"XENLAB: libvirtd up in ([0-9.]+) s", machine.serial_log())
    if started:
        TIMINGS["libvirtd start in dom0 (at its boot)"] = float(started.group(1))
    uri = machine.libvirt_uri()
    _timed("libxl: define the guest over xen+ssh", lambda: define_guest(xenlab, uri))
    yield uri
    conn = libvirt.open(uri)
    try:
        remove_guest(conn)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gateway(xen_host: str, tenants: None) -> Iterator[Helper]:
    """vpsshelld on this machine, the lab's dom0 its one libvirt host."""
    root = Path(tempfile.mkdtemp(prefix="vpsshell-xen-gateway-"))
    os.chmod(root, 0o755)
    helper = Helper(root / "helper", policy=POLICY)
    helper.set_backend(libvirt_backend([(HOST, xen_host)], timeout_seconds=BACKEND_TIMEOUT_SECONDS))
    _timed("libxl: gateway helper start (connects over xen+ssh)", helper.start)
    yield helper
    helper.stop()
    if helper.log.exists():  # what the helper said, for a failed run
        shutil.copy(helper.log, Path(tempfile.gettempdir()) / "vpsshell-xen-gateway-helper.log")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def console(gateway: Helper) -> Iterator[pexpect.spawn]:
    """The owner's console of the guest, attached while it is shut off; it follows the
    guest's starts and reboots."""
    session = console_as(gateway, OWNER, GUEST)
    session.timeout = BOOT_SECONDS
    session.expect_exact(f"the console of {GUEST}. Press Ctrl-] to detach.")
    yield session
    session.close(force=True)


def status(helper: Helper, user: str = OWNER) -> dict[str, Any]:
    result = run(user, helper, f"status {GUEST} --json")
    assert result.code == 0, result
    return dict(result.json())


def in_guest(session: pexpect.spawn, command: str, answer: str) -> None:
    """Wake the guest's shell, run ``command``, expect ``answer``."""
    session.send("\r")
    session.expect_exact("/ # ")
    session.send(command + "\r")
    session.expect(answer)


def lifecycle_events(helper: Helper) -> list[tuple[str, str]]:
    result = run(OWNER, helper, f"events {GUEST} --json --lines=1000")
    assert result.code == 0, result
    records = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    assert {record["domain"] for record in records} <= {GUEST}
    return [(r["kind"], r.get("detail") or "") for r in records if r["user"] is None]


def test_01_status_and_list_show_the_guest_on_the_xen_host(gateway: Helper) -> None:
    info = status(gateway)
    assert (info["state"], info["host"], info["uuid"]) == ("shutoff", HOST, GUEST_UUID)
    assert (info["vcpus"], info["memory_mib"], info["uptime_seconds"]) == (1, 128, None)
    listed = run(OWNER, gateway, "list --json")
    assert listed.code == 0, listed
    assert [(d["name"], d["host"]) for d in listed.json()] == [(GUEST, HOST)]  # no Domain-0
    refused = run(STRANGER, gateway, f"status {GUEST}")
    assert refused.code == 77, refused
    assert f"{GUEST}: no such domain or permission denied" in refused.err


def test_02_start_boots_the_guest_and_its_console_answers(
    gateway: Helper, console: pexpect.spawn
) -> None:
    started = run(OWNER, gateway, f"start {GUEST}")
    assert started.code == 0, started
    console.expect_exact(f"[vpsshell: {GUEST} started]")
    console.expect_exact("XENLAB-DOMU-READY")
    in_guest(console, "echo MARK-$((6*7)) $(hostname)", "MARK-42 xenlab-domu")
    info = status(gateway)
    assert (info["state"], info["host"]) == ("running", HOST)
    assert isinstance(info["uptime_seconds"], int), info
    again = run(OWNER, gateway, f"start {GUEST}")
    assert again.code == 1 and f"{GUEST} is already running" in again.err, again


def test_03_reboot_boots_it_again_on_the_same_console(
    gateway: Helper, console: pexpect.spawn
) -> None:
    rebooted = run(OWNER, gateway, f"reboot {GUEST}")
    assert rebooted.code == 0, rebooted
    console.expect_exact("XENLAB-DOMU-READY")  # a new Xen domain, its console reopened
    in_guest(console, "echo AFTER-$((6*7))", "AFTER-42")
    assert status(gateway)["state"] == "running"
    wait_until(
        lambda: ("rebooted", "reboot") in lifecycle_events(gateway),
        BOOT_SECONDS,
        "the reboot among the guest's events",
        interval=0.5,
    )


def test_04_shutdown_waits_until_shut_off(gateway: Helper, console: pexpect.spawn) -> None:
    down = run(OWNER, gateway, f"shutdown {GUEST} --wait=50")  # within run()'s 60 s
    assert down.code == 0, down
    assert f"{GUEST}: shut off" in down.out, down
    console.expect_exact(f"[vpsshell: {GUEST} stopped]")  # (the reboot's came before READY)
    info = status(gateway)
    assert (info["state"], info["uptime_seconds"]) == ("shutoff", None)
    console.sendcontrol("]")
    console.expect(pexpect.EOF, timeout=30)
    again = run(OWNER, gateway, f"shutdown {GUEST}")
    assert again.code == 1 and f"{GUEST} is not running (shutoff)" in again.err, again


def test_05_events_show_the_starts_and_the_stop(gateway: Helper) -> None:
    seen = lifecycle_events(gateway)
    assert seen[0] == ("started", ""), seen
    assert seen[-1] == ("stopped", "shutdown"), seen
    shown = run(OWNER, gateway, f"events {GUEST}")
    assert shown.code == 0, shown
    assert re.search(rf"{GUEST}\s+started", shown.out), shown
    assert re.search(rf"{GUEST}\s+stopped", shown.out), shown


def test_06_a_reboot_reads_as_rebooted(gateway: Helper) -> None:
    # libxl reboots by creating a new domain: "started" under a new id, then "stopped" of the
    # old one, no reboot event; the backend reads that as the reboot it is
    assert lifecycle_events(gateway) == [
        ("started", ""),
        ("rebooted", "reboot"),
        ("stopped", "shutdown"),
    ]
