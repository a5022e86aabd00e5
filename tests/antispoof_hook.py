"""The shipped anti-spoofing hook (hooks/antispoof) as a module for the tests, and the frames
they send: the hook is one executable file without a ``.py`` name, so it is loaded by path.

``FRAMES`` builds Ethernet frames by hand (no packet library): what a guest that lies about its
MAC, IP or ARP addresses puts on the wire. Every frame carries a marker in its payload, so a
capture counts exactly the frames of one kind."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import struct
import sys
from pathlib import Path
from types import ModuleType

HOOK = Path(__file__).resolve().parents[1] / "hooks" / "antispoof"


def load_hook() -> ModuleType:
    if "antispoof" in sys.modules:
        return sys.modules["antispoof"]
    loader = importlib.machinery.SourceFileLoader("antispoof", str(HOOK))
    spec = importlib.util.spec_from_loader("antispoof", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["antispoof"] = module
    loader.exec_module(module)
    return module


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(destination: str, source: str, ethertype: int, payload: bytes) -> bytes:
    frame = mac_bytes(destination) + mac_bytes(source) + struct.pack("!H", ethertype) + payload
    return frame.ljust(60, b"\0")


def ipv4_udp(source: str, destination: str, payload: bytes, port: int = 9) -> bytes:
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        1,
        0,
        64,
        17,
        0,
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address(destination).packed,
    )
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def arp(operation: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    return struct.pack(
        "!HHBBH6s4s6s4s",
        1,
        0x0800,
        6,
        4,
        operation,
        mac_bytes(sender_mac),
        ipaddress.IPv4Address(sender_ip).packed,
        mac_bytes(target_mac),
        ipaddress.IPv4Address(target_ip).packed,
    )


def ipv6_icmp(source: str, destination: str, icmp: bytes) -> bytes:
    src = ipaddress.IPv6Address(source).packed
    dst = ipaddress.IPv6Address(destination).packed
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _checksum(pseudo + icmp)) + icmp[4:]
    return struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + src + dst + icmp


def echo_request(marker: bytes) -> bytes:
    return struct.pack("!BBHHH", 128, 0, 0, 1, 1) + marker


def neighbor_advert(target: str, mac: str) -> bytes:
    """An unsolicited neighbor advertisement: ``target`` is at ``mac`` (override flag set)."""
    option = struct.pack("!BB6s", 2, 1, mac_bytes(mac))
    return (
        struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ipaddress.IPv6Address(target).packed + option
    )
