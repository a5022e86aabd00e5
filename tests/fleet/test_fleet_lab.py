"""Self-checks of the test fleet: what an admin on the gateway would notice about its hosts.

Each host answers ``virsh`` over its own URI (TLS, or SSH for node4) and nowhere else; a client
without the gateway's certificate is turned away; a live migration moves a running guest to
the other QEMU host, where its console answers with the state it had before; a frozen host
ends an open virsh connection on keepalive while the other hosts answer; a cut link, a killed
and a rebooted host look as they would on real machines.
"""

from __future__ import annotations

import os
import socket

import pytest
from fleetlab import TLS_PORT, FleetLab


def test_every_host_answers_over_its_own_uri_from_its_own_namespace(fleet: FleetLab) -> None:
    namespaces = set()
    for host in fleet.hosts:
        listed = fleet.virsh(host, "list", "--all", "--name")
        assert listed.ok, (host, listed)
        if host.kind == "test":
            assert sorted(listed.lines()) == list(host.domains)
        assert host.uri.startswith(f"{host.kind}+{host.transport}://")
        assert host.ip in host.uri
        namespaces.add(os.readlink(f"/proc/{host.pid}/ns/net"))
    assert len(namespaces) == len(fleet.hosts)
    assert os.readlink("/proc/self/ns/net") not in namespaces
    # the SSH host offers libvirt nothing but its socket behind sshd
    (ssh_host,) = [host for host in fleet.hosts if host.transport == "ssh"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ssh_host.ip, TLS_PORT), timeout=5).close()


def test_a_client_without_the_gateway_certificate_is_refused(fleet: FleetLab) -> None:
    host = fleet.host("node3")
    assert fleet.virsh(host, "uri").ok  # the gateway's own certificate: the control
    for pkipath in (fleet.pki_without_client_certificate(), fleet.pki_of_another_ca()):
        refused = fleet.virsh(host, "list", uri=host.tls_uri(pkipath))
        assert refused.code == 1, (pkipath, refused)
        assert "Unable to read TLS confirmation" in refused.err, refused


def test_a_live_migration_keeps_the_guest_running_and_its_shell_state(fleet: FleetLab) -> None:
    source, destination = fleet.host("node1"), fleet.host("node2")
    fleet.define_guest(source, "fleet-mig")
    fleet.start_guest(source, "fleet-mig")
    with fleet.console(source, "fleet-mig") as console:
        console.wait_shell()
        console.run("KEPT=kept-$((3 * 5))")
    fleet.migrate("fleet-mig", source, destination)
    assert fleet.domain_state(destination, "fleet-mig") == "running"
    assert fleet.domain_state(source, "fleet-mig") is None  # the definition moved too
    with fleet.console(destination, "fleet-mig") as console:
        console.run("echo $KEPT-after-migration", "kept-15-after-migration")

    destination.reboot()  # guests die with their host; their definitions stay
    assert fleet.domain_state(destination, "fleet-mig") == "shut off"


def test_a_frozen_host_ends_an_open_virsh_on_keepalive_while_the_others_answer(
    fleet: FleetLab,
) -> None:
    frozen = fleet.host("node3")
    with fleet.virsh_shell(frozen, interval=1, count=2) as shell:
        assert frozen.domains[0] in shell.run("list --all --name")
        frozen.freeze()
        try:
            for other in fleet.hosts:
                if other is not frozen:
                    assert fleet.virsh(other, "list", "--all").ok, other
            assert "keepalive timeout" in shell.run("list --all --name", timeout=60)
            # a new connection gets no answer at all: TCP connects, TLS never does
            assert fleet.virsh(frozen, "uri", timeout=5).code is None
        finally:
            frozen.thaw()
    assert fleet.virsh(frozen, "list", "--all").ok


def test_a_cut_link_and_a_killed_libvirtd_look_as_on_real_hosts(fleet: FleetLab) -> None:
    cut = fleet.host("node3")
    cut.link_down()
    try:
        assert fleet.virsh(cut, "uri", timeout=5).code is None  # silence, not a refusal
    finally:
        cut.link_up()

    for host in (fleet.host("node3"), fleet.host("node4")):
        host.kill()
        gone = fleet.virsh(host, "uri")
        assert gone.code == 1 and "Connection refused" in gone.err, (host, gone)
        host.start()
        assert sorted(fleet.virsh(host, "list", "--all", "--name").lines()) == list(host.domains)
