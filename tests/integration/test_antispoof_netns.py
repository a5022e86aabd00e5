"""The anti-spoofing hook's rules in real nftables, without Xen: a bridge in a network namespace
of its own (the "dom0"), two "guests" in namespaces of their own, each on a veth port named like
a Xen vif. Guest A sends forged frames from a raw socket (another MAC, another IP, ARP claiming
guest B's address and with another sender MAC, IPv6 from another address, a neighbor
advertisement for another address, another ethertype) and honest ones. Before the rules, the
forged frames reach the bridge's host and the ARP claim takes over B's neighbour entry: the test
can see spoofing. With the hook's rules, none reaches it, each rule's counter holds exactly what
was sent, B's entry stays B's, B's traffic passes and its counters stay zero; removing A's rules
leaves B's. All addresses live only inside the test's namespaces. Needs root and nft.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from antispoof_hook import (
    HOOK,
    arp,
    echo_request,
    ethernet,
    ipv4_udp,
    ipv6_icmp,
    load_hook,
    neighbor_advert,
)
from harness import wait_until

TESTS = Path(__file__).resolve().parents[1]
UUID_A = "0a0a0a0a-0000-4000-8000-00000000000a"
UUID_B = "0b0b0b0b-0000-4000-8000-00000000000b"
HOST_IP, A_IP, B_IP, FORGED_IP = "192.0.2.1", "192.0.2.10", "192.0.2.11", "192.0.2.99"
A_MAC, B_MAC, FORGED_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:99"
COPIES = 3  # of each forged frame

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) is not installed"),
]


@dataclass
class Net:
    host: str
    guest_a: str
    guest_b: str

    def run(self, namespace: str, *argv: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{namespace}: {argv}: {done.stderr}"
        return done.stdout

    def python(self, namespace: str, script: str, stdin: str | None = None) -> str:
        return self.run(namespace, sys.executable, "-c", script, stdin=stdin)


@pytest.fixture
def net() -> Iterator[Net]:
    tag = secrets.token_hex(3)
    net = Net(f"asp-h-{tag}", f"asp-a-{tag}", f"asp-b-{tag}")
    made: list[str] = []
    try:
        for namespace in (net.host, net.guest_a, net.guest_b):
            subprocess.run(["ip", "netns", "add", namespace], check=True)
            made.append(namespace)
        h = ["ip", "-n", net.host]
        subprocess.run([*h, "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run([*h, "addr", "add", f"{HOST_IP}/24", "dev", "br0"], check=True)
        subprocess.run([*h, "link", "set", "br0", "up"], check=True)
        # a neighbour entry may be replaced at once (the default waits a second): what
        # a forged claim can do is what the test sees
        net.run(net.host, "sysctl", "-q", "net.ipv4.neigh.br0.locktime=0")
        for port, guest, mac, address in (
            ("vif1.0", net.guest_a, A_MAC, A_IP),
            ("vif2.0", net.guest_b, B_MAC, B_IP),
        ):
            subprocess.run(
                [*h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", guest],
                check=True,
            )
            subprocess.run([*h, "link", "set", port, "master", "br0", "up"], check=True)
            g = ["ip", "-n", guest]
            subprocess.run([*g, "link", "set", "eth0", "address", mac], check=True)
            subprocess.run([*g, "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
            subprocess.run([*g, "link", "set", "eth0", "up"], check=True)
            subprocess.run([*g, "link", "set", "lo", "up"], check=True)
        yield net
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], check=False)


HOOK_SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(TESTS)!r})
from antispoof_hook import load_hook
hook = load_hook()
uuid, label, vifs = json.loads(sys.stdin.read())
vifs = [hook.Vif(v["devid"], v["device"], v["mac"], tuple(v["ipv4"])) for v in vifs]
hook.nft_apply(hook.apply_ruleset(uuid, vifs, hook.table_state(), hook.Options(), label))
"""


def apply_rules(net: Net, uuid: str, label: str, device: str, mac: str, address: str) -> None:
    """What the hook does on ``started``, with the vifs given instead of read from xl."""
    vif = {"devid": 0, "device": device, "mac": mac, "ipv4": [address]}
    net.python(net.host, HOOK_SCRIPT, stdin=json.dumps([uuid, label, [vif]]))


def hook_cli(net: Net, *args: str) -> str:
    return net.run(net.host, sys.executable, str(HOOK), *args)


def dropped(net: Net, uuid: str) -> dict[str, int]:
    """``antispoof show UUID``: the packets each drop rule of the domain's one vif counted."""
    (chain,) = json.loads(hook_cli(net, "show", uuid))
    return {name: counter["packets"] for name, counter in chain["dropped"].items()}


CAPTURE = """
import socket, sys
markers = sys.argv[1].split(",")
seen = dict.fromkeys(markers, 0)
capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
capture.bind(("br0", 0))
capture.settimeout(30)
print("ready", flush=True)
while True:
    frame, (_, _, packet_type, _, _) = capture.recvfrom(65535)
    if packet_type == socket.PACKET_OUTGOING:
        continue  # the host's answers (an ICMP error quotes the frame it answers)
    for marker in markers:
        if marker.encode() in frame:
            seen[marker] += 1
    if b"ALEGIT-end" in frame:
        break
print(" ".join(f"{k}={v}" for k, v in seen.items()), flush=True)
"""

SEND = """
import socket, sys
sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sender.bind(("eth0", 0))
for frame in sys.stdin.read().split():
    sender.send(bytes.fromhex(frame))
"""


def forged_frames(host_mac: str) -> dict[str, bytes]:
    """Guest A's forged frames, by the drop rule that should catch each; the marker in each
    frame is its name."""
    hook = load_hook()
    a_link_local = hook.link_local(A_MAC)
    broadcast, all_nodes = "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"

    def marker(name: str) -> bytes:
        return f"ASPOOF-{name}".encode()

    return {
        "mac": ethernet(host_mac, FORGED_MAC, 0x0800, ipv4_udp(A_IP, HOST_IP, marker("mac"))),
        "ipv4": ethernet(host_mac, A_MAC, 0x0800, ipv4_udp(FORGED_IP, HOST_IP, marker("ipv4"))),
        # gratuitous ARP: "B's address is at A's MAC"
        "arp-ip": ethernet(
            broadcast, A_MAC, 0x0806, arp(1, A_MAC, B_IP, "00:00:00:00:00:00", B_IP)
        )[:42]
        + marker("arp-ip"),
        "arp-mac": ethernet(
            broadcast, A_MAC, 0x0806, arp(1, FORGED_MAC, A_IP, "00:00:00:00:00:00", HOST_IP)
        )[:42]
        + marker("arp-mac"),
        "ipv6": ethernet(
            all_nodes, A_MAC, 0x86DD, ipv6_icmp("fe80::99", "ff02::1", echo_request(marker("ipv6")))
        ),
        "nd-target": ethernet(
            all_nodes,
            A_MAC,
            0x86DD,
            ipv6_icmp(a_link_local, "ff02::1", neighbor_advert("fe80::b", A_MAC) + marker("nd")),
        ),
        "other": ethernet(host_mac, A_MAC, 0x88B5, marker("other")),
    }


def honest_frames(host_mac: str, last: bool = False) -> list[bytes]:
    hook = load_hook()
    frames = [
        ethernet(host_mac, A_MAC, 0x0800, ipv4_udp(A_IP, HOST_IP, b"ALEGIT-ipv4")),
        ethernet(
            "33:33:00:00:00:01",
            A_MAC,
            0x86DD,
            ipv6_icmp(hook.link_local(A_MAC), "ff02::1", echo_request(b"ALEGIT-ipv6")),
        ),
    ]
    return frames + [ethernet(host_mac, A_MAC, 0x0800, ipv4_udp(A_IP, HOST_IP, b"ALEGIT-end"))]


def send_and_capture(net: Net, host_mac: str) -> dict[str, int]:
    """Guest A sends COPIES of each forged frame, then the honest ones; what reached the
    bridge's host, by marker."""
    forged = forged_frames(host_mac)
    markers = [f"ASPOOF-{'nd' if name == 'nd-target' else name}" for name in forged]
    markers += ["ALEGIT-ipv4", "ALEGIT-ipv6"]
    capture = subprocess.Popen(
        ["ip", "netns", "exec", net.host, sys.executable, "-c", CAPTURE, ",".join(markers)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
        frames = [frame for frame in forged.values() for _ in range(COPIES)]
        frames += honest_frames(host_mac)
        net.python(net.guest_a, SEND, stdin=" ".join(frame.hex() for frame in frames))
        counts, _ = capture.communicate(timeout=60)
    finally:
        capture.kill()
    return {marker: int(count) for marker, count in (item.split("=") for item in counts.split())}


def neighbour_of(net: Net, address: str) -> str:
    out = net.run(net.host, "ip", "neigh", "show", address, "dev", "br0")
    return out.split(" lladdr ")[1].split()[0] if " lladdr " in out else ""


B_TALKS = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"B-HERE", ("192.0.2.1", 9))
"""


def b_is_known(net: Net) -> None:
    """B talks to the host, which learns (or relearns) B's address from B's own ARP."""
    net.run(net.host, "ip", "neigh", "flush", "dev", "br0")
    net.python(net.guest_b, B_TALKS)
    wait_until(lambda: neighbour_of(net, B_IP) == B_MAC, 10, "the host learns B's MAC")


def test_the_rules_drop_and_count_every_forged_frame_and_nothing_else(net: Net) -> None:
    host_mac = net.run(net.host, "cat", "/sys/class/net/br0/address").strip()
    forged = [
        f"ASPOOF-{name}" for name in ("mac", "ipv4", "arp-ip", "arp-mac", "ipv6", "nd", "other")
    ]
    honest = {"ALEGIT-ipv4": 1, "ALEGIT-ipv6": 1}

    # without rules, every forged frame gets through, and A's claim takes B's address
    b_is_known(net)
    before = send_and_capture(net, host_mac)
    assert before == {**dict.fromkeys(forged, COPIES), **honest}, before
    assert neighbour_of(net, B_IP) == A_MAC

    apply_rules(net, UUID_A, "guest-a", "vif1.0", A_MAC, A_IP)
    apply_rules(net, UUID_B, "guest-b", "vif2.0", B_MAC, B_IP)
    apply_rules(net, UUID_A, "guest-a", "vif1.0", A_MAC, A_IP)  # twice: the same rules
    b_is_known(net)  # B's honest traffic passes its own rules
    after = send_and_capture(net, host_mac)
    # none of the forged frames reaches the host; the honest ones (one each) do
    assert after == {**dict.fromkeys(forged, 0), **honest}, after
    assert neighbour_of(net, B_IP) == B_MAC
    assert dropped(net, UUID_A) == {
        "mac": COPIES,
        "arp-mac": COPIES,
        "arp-ip": COPIES,
        "ipv4": COPIES,
        "ipv6": COPIES,
        "nd-target": COPIES,
        "other": COPIES,
    }
    assert set(dropped(net, UUID_B).values()) == {0}

    hook_cli(net, "remove", UUID_A)
    assert json.loads(hook_cli(net, "show", UUID_A)) == []
    (b_chain,) = json.loads(hook_cli(net, "show", UUID_B))
    assert b_chain["devices"] == ["vif2.0"]
    listing = net.run(net.host, "nft", "list", "table", "bridge", "vpsshell_antispoof")
    assert "vif1.0" not in listing and '"vif2.0" : jump' in listing
    hook_cli(net, "remove", UUID_A)  # again: nothing to do, no error
