"""The real helper on the libvirt backend, driven by real tenants through ``vpsshell -c``.

Hosts are libvirt test-driver files (tests/fixtures/libvirt), loaded by the helper's own
connections, plus a "libvirtd" socket that never answers. What a tenant sees: one namespace
over two hosts with host labels, the exit codes of design.md, a clashing name reported to
them as a failure and to the admin in the log, a hung host as exit 75 while other hosts work.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Helper, libvirt_backend, run, wait_until

pytest.importorskip("libvirt", reason="libvirt-python is not installed")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "libvirt"

POLICY = """\
allow user:vpst-alice  @operator web1 web2 elsewhere
allow group:vpst-team  @operator db1 solo
deny  user:vpst-mallory *        *   reason="suspended"
"""


def libvirt_helper(root: Path, hosts: list[tuple[str, str]], timeout: float = 5) -> Helper:
    """A Helper whose config names the libvirt backend with these (label, uri) hosts."""
    helper = Helper(root, policy=POLICY)
    helper.set_backend(libvirt_backend(hosts, timeout_seconds=timeout))
    return helper


@pytest.fixture
def two_hosts(open_dir: Path, tenants: None) -> Iterator[Helper]:
    helper = libvirt_helper(
        open_dir / "helper",
        [
            ("node1", f"test://{FIXTURES / 'node1.xml'}"),
            ("node2", f"test://{FIXTURES / 'node2.xml'}"),
        ],
    ).start()
    yield helper
    helper.stop()


def test_tenants_see_one_namespace_over_two_hosts(two_hosts: Helper) -> None:
    alice = run("vpst-alice", two_hosts, "list --json")
    assert alice.code == 0, alice
    assert [(d["name"], d["host"], d["state"]) for d in alice.json()] == [
        ("web1", "node1", "shutoff"),
        ("web2", "node1", "shutoff"),
    ]
    carol = run("vpst-carol", two_hosts, "list --json")
    assert [(d["name"], d["host"], d["vcpus"], d["memory_mib"]) for d in carol.json()] == [
        ("db1", "node2", 2, 2048)
    ]
    assert "backend libvirt" in run("vpst-alice", two_hosts, "version").out


def test_power_actions_and_exit_codes(two_hosts: Helper) -> None:
    assert run("vpst-alice", two_hosts, "start web1").code == 0
    status = run("vpst-alice", two_hosts, "status web1 --json").json()
    assert (status["state"], status["host"]) == ("running", "node1")
    assert isinstance(status["uptime_seconds"], int)
    again = run("vpst-alice", two_hosts, "start web1")
    assert again.code == 1 and "web1 is already running" in again.err
    assert run("vpst-bob", two_hosts, "start web1").code == 77
    assert run("vpst-mallory", two_hosts, "status db1").code == 77
    numeric = run("vpst-alice", two_hosts, "start 1")  # web1 has libvirt id 1 now
    assert numeric.code in (64, 77), numeric
    assert run("vpst-carol", two_hosts, "start db1").code == 0
    assert run("vpst-alice", two_hosts, "poweroff web1").code == 0
    assert run("vpst-alice", two_hosts, "status web1 --json").json()["state"] == "shutoff"
    assert run("vpst-carol", two_hosts, "status db1 --json").json()["state"] == "running"
    assert run("vpst-carol", two_hosts, "shutdown db1 --wait=10").code == 0
    assert run("vpst-carol", two_hosts, "status db1 --json").json()["state"] == "shutoff"
    allowed = [
        entry
        for entry in two_hosts.audit()
        if entry["action"] == "start" and entry["decision"] == "allow"
    ]
    assert len(allowed) == 3  # acted on by UUID, which the audit line records
    assert all(
        re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", e["uuid"]) for e in allowed
    )
    wait_until(
        lambda: all(
            line in two_hosts.log.read_text()
            for line in ("event: node1/web1 started", "event: node1/web1 stopped (destroyed)")
        ),
        5,
        "the events in the helper's log",
    )


def test_a_name_on_two_hosts_fails_for_the_tenant_and_is_logged_for_the_admin(
    open_dir: Path, tenants: None
) -> None:
    helper = libvirt_helper(
        open_dir / "helper",
        [
            ("node1", f"test://{FIXTURES / 'node1.xml'}"),
            ("node3", f"test://{FIXTURES / 'clash.xml'}"),
        ],
    ).start()
    try:
        clash = run("vpst-alice", helper, "status web1")
        assert clash.code == 1, clash
        assert "more than one host" in clash.err
        assert [d["name"] for d in run("vpst-alice", helper, "list --json").json()] == ["web2"]
        assert run("vpst-carol", helper, "status solo --json").json()["host"] == "node3"
        wait_until(
            lambda: "'web1' is defined on hosts node1, node3" in helper.log.read_text(),
            5,
            "the clash in the helper's log",
        )
    finally:
        helper.stop()


def test_a_hung_host_is_exit_75_and_the_other_host_still_answers(
    open_dir: Path, tenants: None
) -> None:
    hung = open_dir / "hung-libvirt-sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(hung))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])  # and never answer
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    helper = libvirt_helper(
        open_dir / "helper",
        [
            ("node1", f"test://{FIXTURES / 'node1.xml'}"),
            ("stuck", f"qemu+unix:///system?socket={hung}"),
        ],
        timeout=1,
    ).start()
    try:
        started = time.monotonic()
        assert run("vpst-alice", helper, "start web1").code == 0
        elsewhere = run("vpst-alice", helper, "status elsewhere")
        assert elsewhere.code == 75, elsewhere
        assert "stuck" in elsewhere.err
        assert run("vpst-alice", helper, "status web1 --json").json()["state"] == "running"
        assert time.monotonic() - started < 10
        assert "got no answer within 1 s" in helper.log.read_text()
    finally:
        helper.stop()
        server.close()
        for client in held:
            client.close()
