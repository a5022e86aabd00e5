"""A vpsshell gateway driving the test fleet: real tenants, a real vpsshelld, libvirtd hosts
reached only over TLS and SSH.

The helper runs in the root namespace (the gateway) with the libvirt backend naming every host
of the fleet, keepalive 1 s x 2 so that a lost host is noticed within seconds. Tenants:
alice has a QEMU guest on node1 (``vm-a``) and a domain on each test-driver host; bob has one
domain on node3 only; carol one on node4 (the SSH host) and the shut-off QEMU guest on node2.
When node3 fails, carol is the tenant who must notice nothing; when node4 fails, bob.

Each failure test leaves the fleet as it found it (host back and answering).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleetlab import FleetLab
from harness import Helper, console_as, python_as, run, vpsshell_admin, wait_until

ALICE, BOB, CAROL = "vpst-alice", "vpst-bob", "vpst-carol"
LOST_SECONDS = 30  # keepalive 1 s x 2 and a 3 s call timeout, with room for a loaded machine
BACK_SECONDS = 90  # reconnecting backs off up to 30 s between attempts

# A raw client as a tenant: `status DOMAIN` back to back for a while over one connection,
# timing each request. Prints the latencies and the outcomes as JSON.
STATUS_LOOP = r"""
import json, sys, time
from vpsshell.client import HelperClient
from vpsshell.errors import VpsError
socket_path, domain, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = HelperClient(socket_path)
times, outcomes = [], {}
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.perf_counter()
    try:
        state = client.call("status", {"domain": domain})["state"]
    except VpsError as exc:
        state = exc.kind
    times.append(time.perf_counter() - start)
    outcomes[state] = outcomes.get(state, 0) + 1
    time.sleep(0.005)  # a busy tenant, well under the per-user rate limit
print(json.dumps({"times": times, "outcomes": outcomes}))
"""

HOOK = """#!/usr/bin/python3
import json, os, sys
event = json.loads(sys.stdin.read())
if event["kind"].startswith("host-"):
    with open("{out}", "a") as fh:
        fh.write(json.dumps({{"event": event, "host": os.environ["VPSSHELL_HOST"]}}) + "\\n")
"""


class Gateway:
    """The helper on the fleet, and what its hooks saw."""

    def __init__(self, fleet: FleetLab, helper: Helper, hook_log: Path) -> None:
        self.fleet = fleet
        self.helper = helper
        self.hook_log = hook_log

    def host_events(self) -> list[tuple[str, str]]:
        if not self.hook_log.exists():
            return []
        lines = [json.loads(line) for line in self.hook_log.read_text().splitlines()]
        return [(line["event"]["kind"], line["host"]) for line in lines]

    def listed(self, user: str) -> dict[str, dict[str, Any]]:
        result = run(user, self.helper, "list --json")
        assert result.code == 0, result
        return {domain["name"]: domain for domain in result.json()}

    def hosts(self) -> dict[str, dict[str, Any]]:
        result = vpsshell_admin(self.helper, "hosts", "--json")
        return {host["name"]: host for host in json.loads(result.out)}

    def status_loop(self, user: str, domain: str, seconds: float) -> dict[str, Any]:
        argv = python_as(user, STATUS_LOOP, str(self.helper.socket), domain, str(seconds))
        import subprocess

        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def wait_state(self, user: str, domain: str, state: str, timeout: float) -> None:
        wait_until(
            lambda: self.listed(user).get(domain, {}).get("state") == state,
            timeout,
            f"{domain} listed as {state} for {user}",
        )


def p99_ms(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@pytest.fixture(scope="module")
def gateway(fleet: FleetLab, tenants: None) -> Iterator[Gateway]:
    node1, node2, node3, node4 = (fleet.host(f"node{i}") for i in range(1, 5))
    fleet.define_guest(node1, "vm-a")
    fleet.define_guest(node2, "vm-b")
    policy = (
        f"allow user:{ALICE} @operator vm-a {node3.domains[0]} {node4.domains[0]}\n"
        f"allow user:{BOB} @operator {node3.domains[1]}\n"
        f"allow user:{CAROL} @operator {node4.domains[1]} vm-b\n"
    )
    root = Path(tempfile.mkdtemp(prefix="vpsshell-gateway-"))
    os.chmod(root, 0o755)
    helper = Helper(root / "helper", policy=policy)
    hook_log = root / "host-events.jsonl"
    helper.hooks_dir.mkdir(mode=0o755)
    hook = helper.hooks_dir / "50-host-events"
    hook.write_text(HOOK.format(out=hook_log))
    os.chmod(hook, 0o755)
    fleet.configure(helper, timeout_seconds=3, keepalive_interval=1, keepalive_count=2)
    helper.start(wrapper=("env", "PYTHONFAULTHANDLER=1"))  # a crash shows every thread
    try:
        yield Gateway(fleet, helper, hook_log)
    finally:
        helper.stop()
        if helper.log.exists():  # what the helper said, for a failed run
            shutil.copy(helper.log, Path(tempfile.gettempdir()) / "vpsshell-gateway-helper.log")
        shutil.rmtree(root, ignore_errors=True)


def test_tenants_see_and_drive_their_domains_on_every_host_over_tls_and_ssh(
    gateway: Gateway,
) -> None:
    fleet = gateway.fleet
    node3, node4 = fleet.host("node3"), fleet.host("node4")
    listed = gateway.listed(ALICE)
    assert {name: d["host"] for name, d in listed.items()} == {
        "vm-a": "node1",
        node3.domains[0]: "node3",
        node4.domains[0]: "node4",
    }
    assert listed["vm-a"]["state"] == "shutoff"
    assert listed[node4.domains[0]]["state"] == "running"
    assert set(gateway.listed(BOB)) == {node3.domains[1]}
    # an action over the SSH transport, and its outcome as the tenant sees it
    ssh_domain = node4.domains[0]
    assert run(ALICE, gateway.helper, f"poweroff {ssh_domain}").code == 0
    gateway.wait_state(ALICE, ssh_domain, "shutoff", 30)
    assert run(ALICE, gateway.helper, f"start {ssh_domain}").code == 0
    status = run(ALICE, gateway.helper, f"status {ssh_domain} --json")
    assert status.code == 0 and status.json()["host"] == "node4", status
    # someone else's domain, on a host the tenant has none on: the same answer as none at all
    other = run(ALICE, gateway.helper, f"status {node3.domains[1]}")
    missing = run(ALICE, gateway.helper, "status no-such-domain")
    assert (other.code, missing.code) == (77, 77)
    assert other.err.replace(node3.domains[1], "X") == missing.err.replace("no-such-domain", "X")
    # the admin's view: every host connected, with its domains
    hosts = gateway.hosts()
    assert {name: host["state"] for name, host in hosts.items()} == dict.fromkeys(
        ("node1", "node2", "node3", "node4"), "connected"
    )
    assert hosts["node3"]["domains"] == len(node3.domains)
    assert vpsshell_admin(gateway.helper, "hosts").code == 0


@pytest.mark.parametrize("failure", ["freeze", "kill", "link"])
def test_a_failed_host_hurts_only_its_own_tenants_and_comes_back_by_itself(
    gateway: Gateway, failure: str
) -> None:
    fleet = gateway.fleet
    node3 = fleet.host("node3")
    alice_there, bob_there = node3.domains[0], node3.domains[1]
    carols = fleet.host("node4").domains[1]
    seen_before = len(gateway.host_events())
    fail, recover = {
        "freeze": (node3.freeze, node3.thaw),
        "kill": (node3.kill, node3.start),
        "link": (node3.link_down, node3.link_up),
    }[failure]
    fail()
    try:
        # within the keepalive window the host is lost: its domains are unknown at once
        gateway.wait_state(ALICE, alice_there, "unknown", LOST_SECONDS)
        listed = gateway.listed(ALICE)
        assert listed["vm-a"]["state"] != "unknown"  # the other hosts' domains as they are
        assert listed[fleet.host("node4").domains[0]]["state"] == "running"
        status = run(BOB, gateway.helper, f"status {bob_there}")
        assert status.code == 75, status
        assert "host node3" in status.err and node3.ip not in status.err, status.err
        assert run(ALICE, gateway.helper, f"reboot {alice_there}").code == 75
        # carol, whose domains are elsewhere, notices nothing
        loop = gateway.status_loop(CAROL, carols, 5)
        assert set(loop["outcomes"]) == {"running"}, loop["outcomes"]
        assert p99_ms(loop["times"]) < 50, sorted(loop["times"])[-5:]
        hosts = gateway.hosts()
        assert hosts["node3"]["state"] in ("unreachable", "not-answering"), hosts["node3"]
        assert vpsshell_admin(gateway.helper, "hosts").code == 1
        wait_until(
            lambda: ("host-lost", "node3") in gateway.host_events()[seen_before:],
            15,
            "host-lost reached the hook",
        )
    finally:
        recover()
    gateway.wait_state(ALICE, alice_there, "running", BACK_SECONDS)
    assert run(BOB, gateway.helper, f"status {bob_there} --json").json()["host"] == "node3"
    wait_until(
        lambda: ("host-back", "node3") in gateway.host_events()[seen_before:],
        15,
        "host-back reached the hook",
    )
    assert gateway.hosts()["node3"]["state"] == "connected"


def test_a_rebooted_host_is_lost_then_back_and_what_changed_meanwhile_is_told(
    gateway: Gateway,
) -> None:
    node3 = gateway.fleet.host("node3")
    domain = node3.domains[0]
    seen_before = len(gateway.host_events())
    assert run(ALICE, gateway.helper, f"poweroff {domain}").code == 0
    gateway.wait_state(ALICE, domain, "shutoff", 30)
    node3.reboot()  # its test driver starts again from its node XML: the domain runs
    wait_until(
        lambda: (
            gateway.host_events()[seen_before:] == [("host-lost", "node3"), ("host-back", "node3")]
        ),
        BACK_SECONDS,
        "host-lost then host-back reached the hook",
    )
    gateway.wait_state(ALICE, domain, "running", 30)
    events = run(ALICE, gateway.helper, f"events {domain} --json")
    kinds = [(e["kind"], e["detail"]) for e in map(json.loads, events.out.splitlines())]
    assert kinds[-1] == ("started", "missed"), kinds


def test_a_console_follows_its_domain_through_a_live_migration(gateway: Gateway) -> None:
    fleet, helper = gateway.fleet, gateway.helper
    assert run(ALICE, helper, "start vm-a").code == 0
    session = console_as(helper, ALICE, "vm-a", "--no-replay")
    try:
        session.expect("Ctrl-]")
        # the helper holds the console from the start: the tenant's is the way to the shell
        wait_until(lambda: _answers(session, "before"), 180, "the guest's shell answers")
        # while it migrates, the name is on two hosts: tenants see one domain, never an error
        during: list[tuple[int, str]] = []
        migrating = threading.Event()

        def ask_meanwhile() -> None:
            while not migrating.is_set():
                status = run(ALICE, helper, "status vm-a --json")
                during.append((status.code, status.out))

        asker = threading.Thread(target=ask_meanwhile)
        asker.start()
        try:
            moved = vpsshell_admin(helper, "migrate", "vm-a", "node2", timeout=300)
        finally:
            migrating.set()
            asker.join()
        assert moved.code == 0, moved
        assert during and all(code == 0 for code, _ in during), during
        # paused for the moment of the switch-over, as libvirt says; never gone or doubled
        assert {json.loads(out)["state"] for _, out in during} <= {"running", "paused"}
        assert "migrated from node1 to node2" in moved.out
        session.expect("vm-a migrated", timeout=30)
        # the console is back, from the new host: the same shell, still running
        wait_until(
            lambda: _answers(session, "after"),
            60,
            "the console answers from node2",
        )
        # another host hangs: this console, on node2, goes on as if nothing happened
        node3 = fleet.host("node3")
        node3.freeze()
        try:
            gateway.wait_state(BOB, node3.domains[1], "unknown", LOST_SECONDS)
            assert _answers(session, "meanwhile")
        finally:
            node3.thaw()
        gateway.wait_state(BOB, node3.domains[1], "running", BACK_SECONDS)
    finally:
        session.sendcontrol("]")
        session.close()
    status = run(ALICE, helper, "status vm-a --json")
    assert status.json()["host"] == "node2" and status.json()["state"] == "running"
    assert fleet.domain_state("node1", "vm-a") is None  # the definition moved with it
    events = run(ALICE, helper, "events vm-a --json")
    kinds = [(e["kind"], e["detail"]) for e in map(json.loads, events.out.splitlines())]
    assert ("migrated", "out") in kinds and ("migrated", "in") in kinds, kinds
    # an admin's own virsh migrate, leaving the definition behind: no command acts on it
    back = fleet.virsh(
        "node2",
        "migrate",
        "--live",
        "vm-a",
        fleet.host("node1").uri,
        "--migrateuri",
        f"tcp://{fleet.host('node1').ip}",
        timeout=300,
    )
    assert back.ok, back
    wait_until(
        lambda: run(ALICE, helper, "status vm-a --json").json()["host"] == "node1",
        30,
        "status shows node1",
    )
    assert fleet.domain_state("node2", "vm-a") == "shut off"  # the stale copy
    again = run(ALICE, helper, "start vm-a")
    assert again.code == 1 and "already running" in again.err, again
    assert gateway.listed(ALICE)["vm-a"]["host"] == "node1"
    assert run(ALICE, helper, "poweroff vm-a").code == 0
    assert fleet.domain_state("node1", "vm-a") is None  # it ran there as a transient copy
    # what is left is the copy on node2, shut off: that is the domain now
    wait_until(
        lambda: run(ALICE, helper, "status vm-a --json").json()["host"] == "node2",
        30,
        "vm-a is node2's shut-off copy",
    )


def _answers(session: Any, word: str) -> bool:
    import pexpect

    session.send(f"\recho {word}-$((5 * 5))\r")  # typed again until the shell runs it
    try:
        session.expect(f"{word}-25", timeout=3)
        return True
    except pexpect.TIMEOUT:
        return False
