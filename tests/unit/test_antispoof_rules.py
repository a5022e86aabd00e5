"""The anti-spoofing hook's pure parts: addresses, the rules of a vif, the nft transactions that
apply and remove one domain's rules without touching another's, which events do what, and how
a domain's interfaces are read from ``xl list -l`` and libvirt's XML (commands faked)."""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
from antispoof_hook import load_hook

UUID = "0b5d3c5e-1111-4222-8333-444455556666"
OTHER = "9f0e8d7c-aaaa-4bbb-8ccc-ddddeeeeffff"


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    return load_hook()


def vif(hook: ModuleType, **fields: Any) -> Any:
    values: dict[str, Any] = {"devid": 0, "device": "vif5.0", "mac": "00:16:3e:00:00:02"}
    values.update(fields)
    return hook.Vif(**values)


def test_link_local_is_the_modified_eui64_of_the_mac(hook: ModuleType) -> None:
    assert hook.link_local("00:16:3e:00:00:02") == "fe80::216:3eff:fe00:2"
    assert hook.link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"  # the U/L bit flips


def test_addresses_of_ip_are_split_by_family_and_checked(hook: ModuleType) -> None:
    assert hook.split_addresses(["192.168.100.2 2001:db8::2,10.0.0.0/29", ""]) == (
        ("192.168.100.2", "10.0.0.0/29"),
        ("2001:db8::2",),
    )
    assert hook.split_addresses(["10.0.0.7/32"]) == (("10.0.0.7",), ())
    for bad in ("192.168.100.2; nft flush ruleset", "300.1.1.1", "{ 0.0.0.0/0 }"):
        with pytest.raises(hook.HookError):
            hook.split_addresses([bad])
    with pytest.raises(hook.HookError):
        hook.normal_mac('00:16:3e:00:00:02" accept')


def test_a_vif_with_addresses_gets_every_check_and_a_final_drop(hook: ModuleType) -> None:
    rules = hook.vif_rules(
        vif(hook, ipv4=("192.168.100.2",), ipv6=("2001:db8::2",)), hook.Options()
    )
    assert rules[0] == 'ether saddr != 00:16:3e:00:00:02 counter drop comment "mac"'
    assert rules[1] == (
        'ether type arp arp saddr ether != 00:16:3e:00:00:02 counter drop comment "arp-mac"'
    )
    assert 'arp saddr ip != { 192.168.100.2, 0.0.0.0 } counter drop comment "arp-ip"' in rules[2]
    assert 'ip saddr != { 192.168.100.2 } counter drop comment "ipv4"' in rules[5]
    assert (
        'ip6 saddr != { 2001:db8::2, fe80::216:3eff:fe00:2, :: } counter drop comment "ipv6"'
        in (rules[7])
    )
    assert (
        "@th,64,128 != { 0x20010db8000000000000000000000002, "
        '0xfe8000000000000002163efffe000002 } counter drop comment "nd-target"'
    ) in rules[8]
    assert rules[-1] == 'counter drop comment "other"'
    named = [rule.rsplit('comment "', 1)[1].rstrip('"') for rule in rules if "drop" in rule]
    assert named == list(hook.DROP_RULES)


def test_without_ip_only_the_mac_is_enforced(hook: ModuleType) -> None:
    rules = hook.vif_rules(vif(hook), hook.Options())
    assert len(rules) == 2 and all("00:16:3e:00:00:02" in rule for rule in rules)


def test_ipv6_choices(hook: ModuleType) -> None:
    with_any = hook.vif_rules(vif(hook, ipv4=("10.0.0.2",)), hook.Options(ipv6_link_local="any"))
    assert any("ip6 saddr != { fe80::/64, :: }" in rule for rule in with_any)
    assert any(
        "0xfe800000000000000000000000000000-0xfe80000000000000ffffffffffffffff" in rule
        for rule in with_any
    )
    without = hook.vif_rules(vif(hook, ipv4=("10.0.0.2",)), hook.Options(ipv6=False))
    assert not any("ip6" in rule for rule in without)
    assert without[-1] == 'counter drop comment "other"'  # IPv6 then falls to the last drop


def test_apply_replaces_only_this_domains_chains_and_keys(hook: ModuleType) -> None:
    mine, theirs = hook.chain_name(UUID, 0), hook.chain_name(OTHER, 0)
    stale_of_mine = hook.chain_name(UUID, 3)
    state = hook.TableState(
        exists=True,
        chains={"prerouting", mine, stale_of_mine, theirs},
        elements={"vif4.0": mine, "vif4.3": stale_of_mine, "vif7.0": theirs, "vif5.0": theirs},
    )
    ruleset = hook.apply_ruleset(UUID, [vif(hook, ipv4=("10.0.0.2",))], state, hook.Options())
    lines = ruleset.splitlines()
    table = "bridge vpsshell_antispoof"
    assert lines[:5] == [
        f"add table {table}",
        f"add map {table} vifs {{ type ifname : verdict ; }}",
        f"add chain {table} prerouting {{ type filter hook prerouting priority -300 ; "
        "policy accept ; }",
        f"flush chain {table} prerouting",
        f"add rule {table} prerouting iifname vmap @vifs",
    ]
    assert f'delete element {table} vifs {{ "vif4.0" }}' in lines
    assert f'delete element {table} vifs {{ "vif4.3" }}' in lines
    assert f"delete chain {table} {stale_of_mine}" in lines
    assert f"delete chain {table} {mine}" not in lines  # kept, flushed and filled again
    assert f"flush chain {table} {mine}" in lines
    # vif5.0 was left to another domain whose rules were never removed: the key is taken back
    assert f'delete element {table} vifs {{ "vif5.0" }}' in lines
    assert lines[-1] == f'add element {table} vifs {{ "vif5.0" : jump {mine} }}'
    assert not any(theirs in line for line in lines)
    assert 'vifs { "vif7.0" }' not in ruleset


def test_remove_touches_only_this_domain(hook: ModuleType) -> None:
    mine, theirs = hook.chain_name(UUID, 0), hook.chain_name(OTHER, 0)
    state = hook.TableState(
        exists=True, chains={mine, theirs}, elements={"vif4.0": mine, "vif7.0": theirs}
    )
    table = "bridge vpsshell_antispoof"
    assert hook.remove_ruleset(UUID, state).splitlines() == [
        f'delete element {table} vifs {{ "vif4.0" }}',
        f"flush chain {table} {mine}",
        f"delete chain {table} {mine}",
    ]
    assert hook.remove_ruleset(UUID, hook.TableState()).strip() == ""  # nothing there: no-op


def test_events_choose_apply_or_remove(hook: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[tuple[str, str]] = []
    monkeypatch.setattr(hook, "apply", lambda uuid, args: done.append(("apply", uuid)) or "")
    monkeypatch.setattr(hook, "remove", lambda uuid: done.append(("remove", uuid)) or "")
    args = hook.parse_args([])
    for kind, detail in [
        ("started", ""),
        ("rebooted", "reboot"),
        ("migrated", "in"),
        ("stopped", "shutdown"),
        ("crashed", "crash"),
        ("migrated", "out"),
        ("shutdown", "poweroff"),
        ("console-attached", ""),
    ]:
        hook.on_event({"kind": kind, "detail": detail, "uuid": UUID.upper()}, args)
    assert done == [("apply", UUID)] * 3 + [("remove", UUID)] * 3
    for bad in ("../../x", f"{UUID} ", None, 7):
        with pytest.raises(hook.HookError):
            hook.on_event({"kind": "started", "uuid": bad}, args)


def xl_entry(domid: int, name: str, nics: list[dict[str, Any]]) -> dict[str, Any]:
    return {"domid": domid, "config": {"c_info": {"name": name, "uuid": UUID}, "nics": nics}}


def test_xen_vifs_come_from_the_running_domains_config(
    hook: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    listing = [
        xl_entry(4, "web1--migratedaway", [{"devid": 0, "mac": "00:16:3e:00:00:09"}]),
        xl_entry(
            6,
            "web1",
            [
                {"devid": 0, "mac": "00:16:3E:00:00:02", "ip": "192.168.100.2 2001:db8::2"},
                {"devid": 1, "vifname": "web1-lan", "nictype": "vif_ioemu"},
            ],
        ),
        xl_entry(7, "web1--incoming", [{"devid": 0, "mac": "00:16:3e:00:00:08"}]),
        {"domid": 8, "config": {"c_info": {"name": "db1", "uuid": OTHER}, "nics": []}},
    ]
    commands: list[list[str]] = []

    def fake_run(argv: list[str], stdin: str | None = None) -> str:
        commands.append(argv)
        if argv[:2] == [hook.XL, "list"]:
            return json.dumps(listing)
        assert argv == [hook.XENSTORE_READ, "/local/domain/0/backend/vif/6/1/mac"]
        return "00:16:3e:00:00:05\n"

    monkeypatch.setattr(hook, "run", fake_run)
    name, vifs = hook.xen_vifs(UUID)
    assert name == "web1"
    assert vifs == [
        hook.Vif(0, "vif6.0", "00:16:3e:00:00:02", ("192.168.100.2",), ("2001:db8::2",)),
        hook.Vif(1, "web1-lan", "00:16:3e:00:00:05", (), (), ("web1-lan-emu",)),
    ]
    listing[:] = [listing[0]]
    monkeypatch.setattr(hook, "DOMAIN_WAIT_SECONDS", 0.0)  # (it waits for a domain being built)
    with pytest.raises(hook.HookError, match="no running Xen domain"):
        hook.xen_vifs(UUID)


def test_libvirt_interfaces_come_from_the_live_xml(
    hook: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    xml = """<domain type='kvm'><name>web1</name><devices>
      <interface type='bridge'><mac address='52:54:00:aa:bb:cc'/><target dev='vnet3'/>
        <filterref filter='clean-traffic'><parameter name='IP' value='10.1.2.3'/></filterref>
      </interface>
      <interface type='network'><mac address='52:54:00:aa:bb:cd'/></interface>
    </devices></domain>"""
    seen: list[list[str]] = []
    monkeypatch.setattr(hook, "run", lambda argv, stdin=None: seen.append(argv) or xml)
    name, vifs = hook.libvirt_vifs(UUID, "qemu:///system")
    assert seen == [[hook.VIRSH, "-q", "-c", "qemu:///system", "dumpxml", UUID]]
    assert (name, vifs) == ("web1", [hook.Vif(0, "vnet3", "52:54:00:aa:bb:cc", ("10.1.2.3",))])
