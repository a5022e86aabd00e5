"""A real guest under QEMU (TCG) and a real libvirtd, driven by a real tenant through vpsshell.

The session starts ``virtlogd`` and ``libvirtd`` itself when ``qemu:///system`` does not answer
(CI runs no services) and stops them afterwards. The guest is Debian's kernel plus a busybox
initramfs built by ``guest_image`` (serial console, no disk, ``<domain type='qemu'>``). The
helper is a real ``vpsshelld`` on the libvirt backend with two hosts: ``kvm``
(``qemu:///system``) and ``lab`` (a libvirt test-driver file). The tenant is a real OS user
running ``vpsshell`` in a pty.

Events are asserted twice: as the notices an attached console shows (``[vpsshell: NAME
started]``...) and as the helper's log lines (``event: kvm/NAME rebooted (reboot)``).

First, before any helper runs, the backend contract (tests/backend_contract.py) checks the
libvirt backend itself on the same two hosts: the real guest on ``kvm``, the test driver's
domains on ``lab``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import string
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from backend_contract import CHECKS, Console, Domain, NotApplicable, Profile, run_check
from guest_image import PROMPT, READY_LINE, build_guest, find_kernel
from harness import BIN, Helper, is_root, libvirt_backend, run, wait_until

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"
GUEST = "vpst-guest"
SYSTEM = "qemu:///system"
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
HELPER_TIMEOUT_SECONDS = 3  # the backend's per-call timeout in this helper
BOOT_SECONDS = 90  # ~10 s under TCG here; generous for a loaded CI machine

POLICY = f"""\
allow user:vpst-alice @operator {GUEST} web1
allow user:vpst-alice sysrq     {GUEST}
"""


def _answers() -> bool:
    try:
        libvirt.open(SYSTEM).close()
        return True
    except libvirt.libvirtError:
        return False


class Libvirtd:
    """The system libvirtd: the running one, or one started (and later stopped) here."""

    def __init__(self, log_dir: Path) -> None:
        self.log = log_dir / "libvirtd.log"
        self.started: list[subprocess.Popen[bytes]] = []
        self.daemon: subprocess.Popen[bytes] | None = None

    def ensure(self) -> None:
        if _answers():
            return
        for tool, package in (
            ("libvirtd", "libvirt-daemon-system"),
            ("virtlogd", "libvirt-daemon-system"),
            ("qemu-system-x86_64", "qemu-system-x86"),
        ):
            if shutil.which(tool, path=SBIN_PATH) is None:
                pytest.skip(f"{tool} is missing (apt-get install {package}; run-tests does)")
        self.started.append(self._spawn("virtlogd"))  # QEMU's output goes through it
        self.start_daemon()

    def _spawn(self, tool: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [shutil.which(tool, path=SBIN_PATH) or tool],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_daemon(self) -> None:
        self.daemon = self._spawn("libvirtd")
        self.started.append(self.daemon)
        try:
            wait_until(_answers, 30, "libvirtd never answered on qemu:///system")
        except AssertionError:
            pytest.fail(f"libvirtd did not start: {self.log.read_text()[-2000:]}")

    def stop_daemon(self) -> None:
        assert self.daemon is not None
        self.daemon.terminate()
        self.daemon.wait(30)
        self.started.remove(self.daemon)
        self.daemon = None

    def stop(self) -> None:
        for process in reversed(self.started):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.started.clear()


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Libvirtd]:
    if not is_root():
        pytest.skip("needs root: runs libvirtd, defines a domain on qemu:///system, adds users")
    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)  # raised, not printed
    log_dir = Path(tempfile.mkdtemp(prefix="vpsshell-libvirtd-"))
    daemon = Libvirtd(log_dir)
    daemon.ensure()
    yield daemon
    daemon.stop()
    shutil.rmtree(log_dir, ignore_errors=True)


def _remove_domain(conn: object, name: str) -> None:
    try:
        dom = conn.lookupByName(name)  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefine()


@pytest.fixture(scope="module")
def guest(libvirtd: Libvirtd) -> Iterator[str]:
    """The tiny guest, defined (shut off) on qemu:///system; removed afterwards."""
    for path, package in ((Path("/bin/busybox"), "busybox-static"),):
        if not path.exists():
            pytest.skip(f"{path} is missing (apt-get install {package}; run-tests does)")
    try:
        find_kernel()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    images = Path(tempfile.mkdtemp(prefix="vpsshell-guest-", dir="/var/tmp"))
    kernel, initrd = build_guest(images)
    template = string.Template((FIXTURES / "tiny-guest.xml").read_text())
    xml = template.substitute(
        name=GUEST, uuid=str(uuidlib.uuid4()), kernel=str(kernel), initrd=str(initrd)
    )
    conn = libvirt.open(SYSTEM)
    _remove_domain(conn, GUEST)  # a leftover of an interrupted run
    conn.defineXML(xml)
    conn.close()
    yield GUEST
    if _answers():
        conn = libvirt.open(SYSTEM)
        _remove_domain(conn, GUEST)
        conn.close()
    shutil.rmtree(images, ignore_errors=True)


def qemu_profile() -> Profile:
    """The libvirt backend as the helper below uses it, for the backend contract."""

    async def domain_id(name: str) -> str | None:
        def ask() -> str:
            conn = libvirt.open(SYSTEM)
            try:
                return str(conn.lookupByName(name).ID())
            finally:
                conn.close()

        return await asyncio.to_thread(ask)

    return Profile(
        name="libvirt with QEMU",
        table={
            "type": "libvirt",
            "timeout_seconds": 10,
            "hosts": [
                {"name": "kvm", "uri": SYSTEM},
                {"name": "lab", "uri": f"test://{FIXTURES / 'node1.xml'}"},
            ],
        },
        domains=(
            Domain(GUEST, 1, 192, "kvm"),
            Domain("web1", 1, 512, "lab"),
            Domain("web2", 2, 1024, "lab"),
        ),
        boot_seconds=BOOT_SECONDS,
        poll_seconds=0.2,
        console=Console(
            wake=b"\r",
            prompt=PROMPT.encode(),
            command=b"echo MARK-$((6*7))\r",
            answer=b"MARK-42",
            ends_with_domain=True,
        ),
        numeric_id=domain_id,
    )


@pytest.mark.parametrize("check", list(CHECKS))
def test_backend_contract_on_a_real_guest(check: str, guest: str, tmp_path: Path) -> None:
    try:
        asyncio.run(run_check(qemu_profile(), check, str(tmp_path / "state")))
    except NotApplicable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def helper(guest: str, tenants: None) -> Iterator[Helper]:
    root = Path(tempfile.mkdtemp(prefix="vpsshell-e2e-libvirt-"))
    os.chmod(root, 0o755)
    helper = Helper(root / "helper", policy=POLICY)
    helper.set_backend(
        libvirt_backend(
            [("kvm", SYSTEM), ("lab", f"test://{FIXTURES / 'node1.xml'}")],
            timeout_seconds=HELPER_TIMEOUT_SECONDS,
        )
    )
    helper.start()
    yield helper
    helper.stop()
    shutil.rmtree(root, ignore_errors=True)


def state(helper: Helper, name: str = GUEST) -> str:
    result = run("vpst-alice", helper, f"status {name} --json")
    assert result.code == 0, result
    return str(result.json()["state"])


def attach(helper: Helper, *options: str) -> pexpect.spawn:
    session = pexpect.spawn(
        "runuser",
        [
            "-u",
            "vpst-alice",
            "--",
            "env",
            f"VPSSHELL_SOCKET={helper.socket}",
            "TERM=xterm",
            str(BIN / "vpsshell"),
            "-c",
            " ".join(["console", GUEST, "--no-replay", *options]),
        ],
        timeout=BOOT_SECONDS,
    )
    session.expect("Press Ctrl-] to detach")
    return session


def shell_ready(session: pexpect.spawn) -> None:
    """Wait for the guest's init to finish, then for its shell prompt."""
    session.expect("Linux version")
    session.expect(READY_LINE)
    session.send("\r")
    session.expect(PROMPT)


def in_guest(session: pexpect.spawn, command: str, answer: str) -> None:
    session.send(command + "\r")
    session.expect(answer)
    session.expect(PROMPT)


def detach(session: pexpect.spawn) -> int:
    session.send("\x1d")
    session.expect(pexpect.EOF)
    session.close()
    return int(session.exitstatus)


def events_logged(helper: Helper) -> list[str]:
    marker = f"event: kvm/{GUEST} "
    return [
        line.split(marker, 1)[1] for line in helper.log.read_text().splitlines() if marker in line
    ]


def test_a_tenant_starts_uses_reboots_and_powers_off_a_real_guest(helper: Helper) -> None:
    status = run("vpst-alice", helper, f"status {GUEST} --json").json()
    assert (status["state"], status["host"], status["vcpus"], status["memory_mib"]) == (
        "shutoff",
        "kvm",
        1,
        192,
    )
    listed = {d["name"]: d["host"] for d in run("vpst-alice", helper, "list --json").json()}
    assert listed == {GUEST: "kvm", "web1": "lab"}

    session = attach(helper)  # attached while it is off: the console follows the domain
    started = time.monotonic()
    assert run("vpst-alice", helper, f"start {GUEST}").code == 0
    session.expect(f"vpsshell: {GUEST} started")
    shell_ready(session)
    boot_seconds = time.monotonic() - started
    in_guest(session, "echo $((6 * 7))-from-the-guest", "42-from-the-guest")
    in_guest(session, "uname -r", find_kernel()[1])
    status = run("vpst-alice", helper, f"status {GUEST} --json").json()
    assert status["state"] == "running" and isinstance(status["uptime_seconds"], int)

    assert run("vpst-alice", helper, f"sysrq {GUEST} h").code == 0
    session.expect("sysrq: HELP")

    assert run("vpst-alice", helper, f"reboot {GUEST}").code == 0
    session.expect("power button")  # libvirt's reboot pressed it; the guest powers down
    session.expect(f"vpsshell: {GUEST} is rebooting")
    shell_ready(session)  # the same console session, across the reboot
    in_guest(session, "echo after-reboot-$((2 + 3))", "after-reboot-5")
    assert state(helper) == "running"

    assert run("vpst-alice", helper, f"poweroff {GUEST}").code == 0
    session.expect(f"vpsshell: {GUEST} stopped")
    assert state(helper) == "shutoff"
    assert detach(session) == 0
    wait_until(
        lambda: (
            events_logged(helper)[-3:] == ["started", "rebooted (reboot)", "stopped (destroyed)"]
        ),
        10,
        f"the helper's event log lines: {events_logged(helper)}",
    )
    # the same events, and the console's, for the tenant
    shown = run("vpst-alice", helper, f"events {GUEST} --json")
    assert shown.code == 0, shown
    events = [json.loads(line) for line in shown.out.splitlines()]
    assert {e["domain"] for e in events} == {GUEST}
    lifecycle = [(e["kind"], e["detail"]) for e in events if e["user"] is None]
    assert lifecycle[-3:] == [("started", ""), ("rebooted", "reboot"), ("stopped", "destroyed")]
    console = [(e["kind"], e["user"], e["detail"]) for e in events if e["user"] is not None]
    assert console[-2:] == [
        ("console-attached", "vpst-alice", "write"),
        ("console-detached", "vpst-alice", "detached"),
    ]
    print(f"boot to a shell prompt under TCG: {boot_seconds:.1f} s")


def test_shutdown_wait_is_a_graceful_acpi_shutdown(helper: Helper) -> None:
    watcher = attach(helper, "--watch")
    assert run("vpst-alice", helper, f"start {GUEST}").code == 0
    watcher.expect(READY_LINE)  # init is done: acpid listens for the power button
    assert detach(watcher) == 0
    result = run("vpst-alice", helper, f"shutdown {GUEST} --wait=60")
    assert result.code == 0, result
    assert "shut off" in result.out
    log = run("vpst-alice", helper, f"log {GUEST} --lines=20").out
    assert "power button" in log and "reboot: Power down" in log  # the guest did it itself
    wait_until(
        lambda: events_logged(helper)[-2:] == ["shutdown (guest)", "stopped (shutdown)"],
        10,
        f"the helper's event log lines: {events_logged(helper)}",
    )


def test_a_hung_or_restarted_libvirtd_is_temporary_and_spares_other_hosts(
    helper: Helper, libvirtd: Libvirtd
) -> None:
    if libvirtd.daemon is None:
        pytest.skip("libvirtd was already running (not started by this test): not stopping it")
    assert state(helper) == "shutoff"
    libvirtd.daemon.send_signal(signal.SIGSTOP)  # hung: accepts, answers nothing
    try:
        # status answers from the helper's record while the host answered within the
        # timeout; then it asks the host, which does not answer: 75, naming the host
        hung = wait_until(
            lambda: (r := run("vpst-alice", helper, f"status {GUEST}")).code == 75 and r,
            2 * HELPER_TIMEOUT_SECONDS + 10,
            "status of a domain on the hung host turns temporary",
        )
        assert "kvm" in hung.err
        assert state(helper, "web1") == "shutoff"  # the other host answers, at once
        again = run("vpst-alice", helper, f"status {GUEST}")
        assert again.code == 75 and "not answering" in again.err
    finally:
        libvirtd.daemon.send_signal(signal.SIGCONT)
    wait_until(lambda: run("vpst-alice", helper, f"status {GUEST}").code == 0, 30, "kvm back")

    libvirtd.stop_daemon()  # dead: the connection is closed, the socket refuses
    gone = run("vpst-alice", helper, f"status {GUEST}")
    assert gone.code == 75 and "kvm" in gone.err, gone
    assert state(helper, "web1") == "shutoff"
    libvirtd.start_daemon()
    wait_until(lambda: run("vpst-alice", helper, f"status {GUEST}").code == 0, 30, "reconnect")
    log = helper.log.read_text()
    assert "host kvm: connection to libvirt lost" in log
    assert "host kvm: reconnected" in log
