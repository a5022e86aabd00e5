"""The shipped anti-spoofing hook on real Xen, and xl migrate seen by tenants.

dom0 runs vpsshelld (xen backend) with hooks/antispoof enabled the README's way: a two-line
script in the hooks directory that runs the copy pip installed into the helper's venv. Three
guests have a vif on dom0's xenbr0 (192.168.100.1) with ``mac=`` and ``ip=``: ``guard1`` (the
one that lies), ``guard2`` (a neighbour that must see no effect) and ``roam1`` (a PVH guest: the
lab's Xen has no shadow paging, so only HAP guests can be migrated). The tenant ``xt-alice``
starts them with ``vpsshell``; the started events run the hook; commands run in the guests over
their consoles (busybox: ip, ping, arping). Every claim is checked three ways: the rules'
counters (``antispoof show``), a capture on xenbr0 in dom0 (tcpdump) and dom0's neighbour
table. Needs ``VPSSHELL_XENLAB=1``.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import harness
import pexpect
import pytest
from labkit import (
    CONFIG_DIR,
    HELPER_CONFIG,
    HELPER_LOG,
    HELPER_PID,
    OWNER,
    VENV,
    Lab,
    start_helper,
)

pytestmark = pytest.mark.xenlab

BOOT_SECONDS = 180
HOOK = f"{VENV}/share/vpsshell/hooks/antispoof"
DOM0_IP = "192.168.100.1"
FORGED_IP, FORGED_MAC = "192.168.100.99", "00:16:3e:00:00:99"
POLICY = "/etc/vpsshell/policy.d/40-antispoof.policy"
KEY = "/root/.ssh/id_ed25519"  # root's, for xl migrate's ssh to localhost


class Guest:
    def __init__(self, name: str, uuid: str, mac: str, ip: str, pvh: bool = False) -> None:
        self.name, self.uuid, self.mac, self.ip, self.pvh = name, uuid, mac, ip, pvh


GUARD1 = Guest(
    "guard1", "a5a5a5a5-0001-4000-8000-000000000011", "00:16:3e:00:00:11", "192.168.100.11"
)
GUARD2 = Guest(
    "guard2", "a5a5a5a5-0002-4000-8000-000000000012", "00:16:3e:00:00:12", "192.168.100.12"
)
ROAM1 = Guest(
    "roam1", "a5a5a5a5-0003-4000-8000-000000000013", "00:16:3e:00:00:13", "192.168.100.13", pvh=True
)
GUESTS = (GUARD1, GUARD2, ROAM1)


def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    return harness.wait_until(predicate, timeout, message, interval=0.5)


def config_file(guest: Guest) -> str:
    """The lab's guest config, renamed, with a vif on xenbr0 and the guest's address."""
    edits = [
        f's/^name = .*/name = "{guest.name}"/',
        f's/^extra = .*/extra = "console=hvc0 quiet xenlab.ip={guest.ip}"/',
        f's/^vif = .*/vif = [ "mac={guest.mac},ip={guest.ip},bridge=xenbr0" ]/',
    ]
    if guest.pvh:
        # TCG's SVM has no next-RIP: Xen cannot emulate a PVH guest's RDTSCP, so hide it
        edits.append('s/^type = .*/type = "pvh"\\ncpuid = "host,rdtscp=0"/')
    script = "; ".join(edits)
    return (
        f"sed '{script}' /etc/xen/xenlab-domu.cfg > {CONFIG_DIR}/{guest.name}.cfg && "
        f"echo 'uuid = \"{guest.uuid}\"' >> {CONFIG_DIR}/{guest.name}.cfg"
    )


@pytest.fixture(scope="module")
def lab(xenlab: Lab) -> Iterator[Lab]:
    """The guests' configs, their grant, the hook enabled, root's ssh key for ``xl migrate
    DOMAIN localhost``, and the helper running."""
    names = " ".join(guest.name for guest in GUESTS)
    xenlab.run(
        " && ".join(
            [
                "set -e",
                *(config_file(guest) for guest in GUESTS),
                # as the README says: the hook waits until xl has built a domain (~20 s here)
                f"printf '[limits]\\nhook_timeout_seconds = 120\\n' >> {HELPER_CONFIG}",
                f"echo 'allow user:{OWNER} @all {names}' > {POLICY}",
                f"chmod 644 {POLICY}",
                "mkdir -p /etc/vpsshell/hooks.d",
                f"printf '#!/bin/sh\\nexec {HOOK}\\n' > /etc/vpsshell/hooks.d/50-antispoof",
                "chmod 755 /etc/vpsshell/hooks.d/50-antispoof",
                "test -x " + HOOK,
                "nft delete table bridge vpsshell_antispoof 2>/dev/null || true",
                f"[ -f {KEY} ] || ssh-keygen -q -t ed25519 -N '' -f {KEY}",
                f"cat {KEY}.pub >> /root/.ssh/authorized_keys",
                "ssh -o StrictHostKeyChecking=accept-new -o BatchMode=yes localhost true",
            ]
        )
    )
    start_helper(xenlab)
    try:
        yield xenlab
    finally:
        xenlab.run(
            f"kill $(cat {HELPER_PID}); sleep 1; tail -60 {HELPER_LOG}; "
            f"for d in {names}; do xl destroy $d 2>/dev/null; done; "
            f"rm -f /etc/vpsshell/hooks.d/50-antispoof {POLICY}; "
            f"sed -i '/^\\[limits\\]$/d; /^hook_timeout_seconds = 120$/d' {HELPER_CONFIG}",
            check=False,
        )


# -- dom0's view --------------------------------------------------------------------------------


def chains(lab: Lab, guest: Guest) -> list[dict[str, Any]]:
    return list(json.loads(lab.run(f"{HOOK} show {guest.uuid}").out))


def drops(lab: Lab, guest: Guest) -> dict[str, int]:
    """What each drop rule of the guest's one vif counted (packets)."""
    (chain,) = chains(lab, guest)
    return {name: counter["packets"] for name, counter in chain["dropped"].items()}


def domid(lab: Lab, guest: Guest) -> int:
    return int(lab.run(f"xl domid {guest.name}").out)


def protected(lab: Lab, guest: Guest) -> list[str]:
    """The vif devices the guest's rules are on, once the hook ran for its current domain."""
    found = chains(lab, guest)
    return list(found[0]["devices"]) if found else []


def as_number(ipv4: str) -> str:
    """An IPv4 address as the 32-bit number a BPF filter compares with (``arp[14:4]``)."""
    return "0x" + "".join(f"{int(byte):02x}" for byte in ipv4.split("."))


def neighbour(lab: Lab, address: str) -> str:
    out = lab.run(f"ip neigh show {address} dev xenbr0").out
    return out.split(" lladdr ")[1].split()[0] if " lladdr " in out else ""


class Capture:
    """tcpdump on xenbr0 in dom0 for one BPF filter: what reached dom0's side of the bridge."""

    def __init__(self, lab: Lab, bpf: str) -> None:
        self.lab = lab
        lab.run(
            "rm -f /tmp/antispoof.pcap /tmp/antispoof.err; "
            f"setsid tcpdump -i xenbr0 -n -U -w /tmp/antispoof.pcap '{bpf}' "
            "> /dev/null 2> /tmp/antispoof.err < /dev/null & echo $! > /tmp/antispoof.pid"
        )
        wait_until(
            lambda: "listening on" in lab.run("cat /tmp/antispoof.err").out, 60, "tcpdump listens"
        )

    def packets(self) -> int:
        self.lab.run("kill -INT $(cat /tmp/antispoof.pid); sleep 1")
        listing = self.lab.run("tcpdump -n -r /tmp/antispoof.pcap 2>/dev/null || true").out
        return len(listing.splitlines())


# -- the guests' consoles -----------------------------------------------------------------------


class Console:
    """A tenant's console of a guest, through ``ssh -tt`` into dom0, at the guest's shell."""

    counter = itertools.count()

    def __init__(self, lab: Lab, guest: Guest) -> None:
        self.child = pexpect.spawn(
            lab.ssh[0],
            [
                *lab.ssh[1:],
                "-tt",
                "root@127.0.0.1",
                lab.tenant_argv(OWNER, f"console {guest.name}"),
            ],
            encoding="utf-8",
            codec_errors="replace",
            timeout=BOOT_SECONDS,
        )
        self.child.expect("XENLAB-DOMU-READY")
        self.prompt()

    def prompt(self) -> None:
        """Enter until the guest's shell prompts (a key pressed while the helper reopens the
        console of a new domain may not reach the guest)."""
        for _ in range(BOOT_SECONDS // 10):
            self.child.send("\r")
            if self.child.expect([pexpect.TIMEOUT, "/ # "], timeout=10) == 1:
                return
        raise AssertionError(f"no prompt from the guest: {self.child.before[-500:]!r}")

    def run(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run ``command`` in the guest: its exit status and output."""
        mark = f"DONE{next(self.counter)}"
        self.child.send(f"{command}; echo {mark}-$?-{mark}\r")
        self.child.expect(f"{mark}-(\\d+)-{mark}", timeout=timeout)
        status = int(self.child.match.group(1))
        return status, self.child.before

    def close(self) -> None:
        self.child.sendcontrol("]")
        self.child.close(force=True)


def start(lab: Lab, guest: Guest) -> None:
    result = lab.vpsshell(OWNER, f"start {guest.name}")
    assert result.code == 0, result
    vif = f"vif{domid(lab, guest)}.0"
    wait_until(lambda: protected(lab, guest) == [vif], BOOT_SECONDS, f"rules on {vif}")


@pytest.fixture(scope="module")
def consoles(lab: Lab) -> Iterator[dict[str, Console]]:
    start(lab, GUARD1)
    start(lab, GUARD2)
    opened = {guest.name: Console(lab, guest) for guest in (GUARD1, GUARD2)}
    try:
        yield opened
    finally:
        for console in opened.values():
            console.close()


# -- the tests ----------------------------------------------------------------------------------


def test_01_a_started_guest_gets_rules_for_its_vif_and_can_ping_dom0(
    lab: Lab, consoles: dict[str, Console]
) -> None:
    listing = lab.run("nft list table bridge vpsshell_antispoof").out
    for guest in (GUARD1, GUARD2):
        assert f'"vif{domid(lab, guest)}.0" : jump' in listing
        assert f"ether saddr != {guest.mac}" in listing
    assert "antispoof: guard1: vif" in lab.helper_log()  # the hook's report, in the helper's log
    status, out = consoles["guard1"].run(f"ping -c 3 -W 2 {DOM0_IP}")
    assert status == 0 and "3 packets received" in out, out
    assert neighbour(lab, GUARD1.ip) == GUARD1.mac
    assert set(drops(lab, GUARD1).values()) == {0}  # honest traffic: nothing dropped


def test_02_another_ip_does_not_reach_dom0(lab: Lab, consoles: dict[str, Console]) -> None:
    guard1 = consoles["guard1"]
    guard1.run(f"ip addr add {FORGED_IP}/24 dev eth0")
    try:
        # unprotected (rules removed by hand), the forged source reaches dom0: the capture works
        lab.run(f"{HOOK} remove {GUARD1.uuid}")
        try:
            capture = Capture(lab, f"icmp and src host {FORGED_IP}")
            # (-W 5: dom0's first answer waits for its ARP of the forged address)
            guard1.run(f"ping -c 3 -W 5 -I {FORGED_IP} {DOM0_IP}")
            assert capture.packets() == 3
        finally:
            lab.run(f"{HOOK} apply {GUARD1.uuid}")
        lab.run(f"ip neigh flush to {FORGED_IP} dev xenbr0")  # dom0 answered, so it learnt it

        capture = Capture(lab, f"src host {FORGED_IP} or (arp and arp[14:4] = 0xc0a86463)")
        status, out = guard1.run(f"ping -c 3 -W 1 -I {FORGED_IP} {DOM0_IP}")
        assert status != 0 and "0 packets received" in out, out
        assert capture.packets() == 0
        counted = drops(lab, GUARD1)
        assert counted["ipv4"] == 3, counted
        assert counted["mac"] == 0 and counted["arp-mac"] == 0, counted
    finally:
        guard1.run(f"ip addr del {FORGED_IP}/24 dev eth0")
    assert neighbour(lab, FORGED_IP) == ""  # dom0 never heard of the forged address


def test_03_gratuitous_arp_for_dom0s_or_a_neighbours_address_is_dropped(
    lab: Lab, consoles: dict[str, Console]
) -> None:
    guard1, guard2 = consoles["guard1"], consoles["guard2"]
    status, out = guard2.run(f"ping -c 1 -W 2 {DOM0_IP}")  # dom0 learns guard2's MAC
    assert status == 0, out
    assert neighbour(lab, GUARD2.ip) == GUARD2.mac
    before = drops(lab, GUARD1)["arp-ip"]
    claimed = " or ".join(f"arp[14:4] = {as_number(ip)}" for ip in (DOM0_IP, GUARD2.ip))
    capture = Capture(lab, f"arp and ({claimed}) and ether src {GUARD1.mac}")
    # busybox arping binds to the address it claims: the guest must allow that
    guard1.run("echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind")
    guard1.run(f"arping -U -c 3 -I eth0 {DOM0_IP}")  # "dom0's address is at my MAC"
    guard1.run(f"arping -U -c 3 -I eth0 {GUARD2.ip}")
    assert capture.packets() == 0
    assert drops(lab, GUARD1)["arp-ip"] == before + 6
    assert neighbour(lab, GUARD2.ip) == GUARD2.mac  # dom0 still sends guard2's frames to guard2


def test_04_another_mac_does_not_reach_dom0(lab: Lab, consoles: dict[str, Console]) -> None:
    guard1 = consoles["guard1"]
    before = drops(lab, GUARD1)["mac"]
    capture = Capture(lab, f"ether src {FORGED_MAC}")
    relabel = "ip link set eth0 down && ip link set eth0 address {} && ip link set eth0 up"
    guard1.run(relabel.format(FORGED_MAC))
    try:
        status, out = guard1.run(f"ping -c 3 -W 1 {DOM0_IP}")
        assert status != 0, out
    finally:
        guard1.run(relabel.format(GUARD1.mac))
    assert capture.packets() == 0
    assert drops(lab, GUARD1)["mac"] >= before + 3  # the pings, or the ARP asking for dom0
    assert neighbour(lab, GUARD1.ip) in (GUARD1.mac, "")


def test_05_the_neighbour_was_unaffected_and_a_stopped_guest_leaves_no_rules(
    lab: Lab, consoles: dict[str, Console]
) -> None:
    status, out = consoles["guard2"].run(f"ping -c 3 -W 2 {DOM0_IP}")
    assert status == 0 and "3 packets received" in out, out
    assert set(drops(lab, GUARD2).values()) == {0}
    old_vif = f"vif{domid(lab, GUARD1)}.0"
    result = lab.vpsshell(OWNER, "poweroff guard1")
    assert result.code == 0, result
    wait_until(lambda: chains(lab, GUARD1) == [], 120, "guard1's rules removed")
    listing = lab.run("nft list table bridge vpsshell_antispoof").out
    assert old_vif not in listing and GUARD1.uuid.replace("-", "") not in listing
    assert protected(lab, GUARD2) == [f"vif{domid(lab, GUARD2)}.0"]


def test_06_xl_migrate_is_seen_by_tenants_and_consoles_and_the_rules_follow(lab: Lab) -> None:
    start(lab, ROAM1)
    old_vif = f"vif{domid(lab, ROAM1)}.0"
    console = Console(lab, ROAM1)
    try:
        migrated = lab.run("xl migrate roam1 localhost", timeout=600, check=False)
        assert migrated.code == 0, migrated
        new_vif = f"vif{domid(lab, ROAM1)}.0"
        assert new_vif != old_vif
        for _ in ("out", "in"):  # the events, as notices on the console
            console.child.expect_exact("[vpsshell: roam1 migrated]")
        console.prompt()  # the same console session reaches the guest in its new domain
        status, out = console.run(f"ping -c 3 -W 2 {DOM0_IP}")
        assert status == 0 and "3 packets received" in out, out
        wait_until(lambda: protected(lab, ROAM1) == [new_vif], 120, f"rules moved to {new_vif}")
        assert old_vif not in lab.run("nft list table bridge vpsshell_antispoof").out
        status, out = console.run(
            f"ip addr add {FORGED_IP}/24 dev eth0 && ping -c 2 -W 1 -I {FORGED_IP} {DOM0_IP}"
        )
        assert status != 0, out
        assert drops(lab, ROAM1)["ipv4"] == 2
    finally:
        console.close()
    result = lab.vpsshell(OWNER, "events roam1 --json --lines=100")
    assert result.code == 0, result
    records = [json.loads(line) for line in result.out.splitlines() if line.startswith("{")]
    seen = [(r["kind"], r["detail"]) for r in records if not r["kind"].startswith("console-")]
    assert seen[-2:] == [("migrated", "out"), ("migrated", "in")], seen
    assert {r["domain"] for r in records} == {"roam1"}
    log = lab.helper_log()
    assert re.search(r"event: xenlab/roam1 migrated \(out\)", log), log[-3000:]
