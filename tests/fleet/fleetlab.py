"""A fleet of libvirt hosts on this machine, reached only over a network, for a gateway's tests.

``FleetLab(specs)`` (a context manager; needs root) makes a Linux bridge in the root network
namespace with the gateway's address (the vpsshelld under test runs there, as any root process)
and one network namespace per host, joined to the bridge by a veth pair (``eth0`` inside).
Each host runs its own libvirtd there: a *session* daemon of an OS user made for that host,
with its own ``HOME``, ``XDG_RUNTIME_DIR``, ``XDG_CONFIG_HOME``, ``XDG_CACHE_HOME``, config
file, certificates and ``host_uuid`` (libvirt refuses to migrate between two hosts with the
same one). Session daemons of separate users share nothing (no /run/libvirt, no
/var/lib/libvirt), which is what lets several run side by side without mount namespaces.

Hosts are of two kinds: ``qemu`` (real QEMU TCG guests: the e2e tests' tiny kernel + busybox
guest, no disk; ``qemu+tls://IP/session``) and ``test`` (libvirt's test driver loading a node
XML written for that host, with domains named ``hNN-dKKK``, unique in the fleet;
``test+tls://IP/ABS/PATH/node.xml``). The TLS hosts listen on their own address only
(``listen_tls = 1``, ``listen_tcp = 0``, client certificates required); the PKI comes from
``fleetpki``, and the gateway's URIs name its client certificate with ``?pkipath=DIR``.

A host with ``transport="ssh"`` listens on no TCP port of libvirt's: an sshd runs in its
namespace and the gateway logs in as the host's user with a key of its own. An ssh login sets
no ``XDG_RUNTIME_DIR``, so neither ``virt-ssh-helper`` nor ``nc`` on the far side would find
the session daemon's socket; the URI names it (``socket=``) and asks for the netcat proxy
(``proxy=netcat``: ``nc -U SOCKET`` as that user). The host key is checked: the URI's
``command=`` is a small wrapper that runs ``ssh -F`` with the lab's ``ssh_config``
(``UserKnownHostsFile`` written by the lab, ``StrictHostKeyChecking yes``), since the
plain ``+ssh`` transport has no ``known_hosts`` parameter and root's own ssh files must not be
touched.

Each host has fault controls that wait for their outcome: ``freeze``/``thaw`` (SIGSTOP and
SIGCONT of its libvirtd), ``kill`` and ``start``, ``link_down``/``link_up`` (its ``eth0``),
``reboot``. The lab has an admin's tools, run from the gateway side over the hosts' URIs:
``virsh``, ``virsh_shell`` (an interactive virsh with keepalives), ``define_guest``,
``start_guest``, ``console`` (``virsh console`` on a pty), ``migrate`` (``virsh migrate
--live``, migration data over the test network), and ``backend_toml``/``configure`` for a
vpsshelld config naming every host.

Names and the subnet come from a slot taken under a lock (``fleetslots``), so two labs never
clash, and a crashed lab's leftovers are removed by the next one. ``close()`` (or leaving the
``with`` block, also on an exception) removes processes, namespaces, links, users and files.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import fleetslots
from e2e.guest_image import PROMPT, build_guest
from fleetpki import CertificateAuthority, ca_only
from harness import wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt"
GUEST_TEMPLATE = FIXTURES / "tiny-guest.xml"
LIBVIRTD = "/usr/sbin/libvirtd"
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
TLS_PORT = 16514
DEVICE = "eth0"  # each host's end of its veth pair, inside its namespace
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_SECONDS = 60.0  # a daemon answering; generous for 20 at once on a loaded machine
BOOT_SECONDS = 120.0  # the tiny guest's shell under TCG: ~10 s alone, more beside others
TOOLS = {
    "ip": "iproute2",
    "setpriv": "util-linux",
    "useradd": "passwd",
    "certtool": "gnutls-bin",
    "virsh": "libvirt-clients",
    LIBVIRTD: "libvirt-daemon-system",
}
SSH_TOOLS = {SSHD: "openssh-server", SSH: "openssh-client", "ssh-keygen": "openssh-client"}
QEMU_TOOLS = {"qemu-system-x86_64": "qemu-system-x86"}
# on the far side of an ssh host, as its user: the netcat proxy's `nc -U`
FAR_SIDE_TOOLS = {"nc": "netcat-openbsd"}

Kind = Literal["qemu", "test"]
Transport = Literal["tls", "ssh"]


@dataclass(frozen=True)
class HostSpec:
    """What one host of a lab is: its driver, how the gateway reaches it, its test domains."""

    kind: Kind
    transport: Transport = "tls"
    domains: int = 0  # test hosts: how many domains its node XML holds


@dataclass(frozen=True)
class VirshResult:
    """``virsh``'s exit status (None: it had not finished when its time was up) and output."""

    code: int | None
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def lines(self) -> list[str]:
        return [line.strip() for line in self.out.splitlines() if line.strip()]


def _run(*argv: str) -> str:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of printable ASCII is a TOML basic string
    raise TypeError(f"no TOML form for {value!r} here")


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return f"({path} unreadable)"


class FleetHost:
    """One host: its namespace, user, libvirtd (and sshd), URI and fault controls."""

    def __init__(self, lab: FleetLab, plan: fleetslots.Plan, spec: HostSpec, index: int) -> None:
        self.lab = lab
        self.index = index
        self.label = f"node{index}"
        self.kind = spec.kind
        self.transport = spec.transport
        self.ip = plan.host_ip(index)
        self.namespace = plan.namespace(index)
        self.veth = plan.veth(index)
        self.user = plan.user(index)
        self.dir = lab.root / "hosts" / self.label
        self.home = self.dir / "home"
        self.runtime_dir = self.dir / "run"
        self.config = self.dir / "libvirtd.conf"
        self.log = self.dir / "libvirtd.log"
        self.node_xml = self.dir / "node.xml"
        self.sshd_dir = self.dir / "sshd"
        self.host_uuid = str(uuid.uuid4())
        self.domains = tuple(f"h{index:02d}-d{k:03d}" for k in range(1, spec.domains + 1))
        self.uid = -1
        self.gid = -1
        self.process: subprocess.Popen[bytes] | None = None
        self.sshd: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<FleetHost {self.label} {self.kind}/{self.transport} {self.ip}>"

    # --- URIs ---------------------------------------------------------------------------

    @property
    def _path(self) -> str:
        return "/session" if self.kind == "qemu" else str(self.node_xml)

    @property
    def socket_path(self) -> Path:
        """The session daemon's socket (where ``XDG_RUNTIME_DIR`` puts it)."""
        return self.runtime_dir / "libvirt" / "libvirt-sock"

    def tls_uri(self, pkipath: Path) -> str:
        """This host's TLS URI with the client certificates of ``pkipath``."""
        return f"{self.kind}+tls://{self.ip}{self._path}?pkipath={pkipath}"

    @property
    def uri(self) -> str:
        """The URI the gateway uses for this host."""
        if self.transport == "tls":
            return self.tls_uri(self.lab.client_pki)
        ssh = self.lab.ssh_dir
        return (
            f"{self.kind}+ssh://{self.user}@{self.ip}{self._path}"
            f"?keyfile={ssh / 'id_ed25519'}&command={ssh / 'ssh'}"
            f"&proxy=netcat&socket={self.socket_path}"
        )

    # --- processes ----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.label}: libvirtd is not running")
        return self.process.pid

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as output:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not in the test run's process group
            )

    def launch(self) -> None:
        """Start libvirtd (and the sshd of an ssh host) without waiting for them."""
        if self.process is not None:
            raise RuntimeError(f"{self.label}: libvirtd is already running")
        environment = {
            "HOME": self.home,
            "XDG_RUNTIME_DIR": self.runtime_dir,
            "XDG_CONFIG_HOME": self.dir / "config",
            "XDG_CACHE_HOME": self.dir / "cache",
            "PATH": PATH,
            "LANG": "C.UTF-8",
        }
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        argv += ["env", "-i", *(f"{key}={value}" for key, value in environment.items())]
        argv += [LIBVIRTD, "--config", str(self.config)]
        if self.transport == "tls":
            argv.append("--listen")
        self.process = self._spawn(argv, self.log)
        if self.transport == "ssh" and self.sshd is None:
            config = self.sshd_dir / "sshd_config"
            self.sshd = self._spawn([SSHD, "-D", "-e", "-f", str(config)], self.sshd_dir / "log")

    def _check_running(self) -> None:
        for name, process, log in (
            ("libvirtd", self.process, self.log),
            ("sshd", self.sshd, self.sshd_dir / "log"),
        ):
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{self.label}: {name} exited: {_tail(log)}")

    def _listening(self) -> bool:
        """The daemon's way in is open: its TLS port, or the sshd and the daemon's socket."""
        self._check_running()
        if self.transport == "ssh":
            if not self.socket_path.exists():
                return False
            port, greeting = 22, b"SSH-2.0-"
        else:
            port, greeting = TLS_PORT, b""
        try:
            with socket.create_connection((self.ip, port), timeout=1) as probe:
                return probe.recv(16).startswith(greeting) if greeting else True
        except OSError:
            return False

    def answers(self, timeout: float = 15.0) -> bool:
        """A new connection over this host's URI is answered within ``timeout``."""
        return self.lab.virsh(self, "uri", timeout=timeout).ok

    def wait_answering(self, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        wait_until(self._listening, timeout, f"{self.label}: libvirtd never listened", 0.05)
        wait_until(
            lambda: self.answers(max(1.0, deadline - time.monotonic())),
            max(1.0, deadline - time.monotonic()),
            f"{self.label}: libvirtd never answered over {self.uri}: {_tail(self.log)}",
            0.2,
        )

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start libvirtd again (after ``kill``); returns once it answers over its URI."""
        self.launch()
        self.wait_answering(timeout)

    def kill(self) -> None:
        """SIGKILL libvirtd, as a crash would; its guests keep running. Returns once it is
        gone (the kernel has closed its connections)."""
        process = self.process
        if process is None:
            raise RuntimeError(f"{self.label}: libvirtd is not running")
        process.kill()
        process.wait()
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP libvirtd: connections stay open, nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)
        wait_until(lambda: fleetslots.process_state(self.pid) == "T", 10, f"{self.label} stopped")

    def thaw(self) -> None:
        """SIGCONT libvirtd; returns once it answers new connections again."""
        os.kill(self.pid, signal.SIGCONT)
        wait_until(lambda: fleetslots.process_state(self.pid) != "T", 10, f"{self.label} continued")
        self.wait_answering()

    def _set_link(self, state: str) -> None:
        _run("ip", "-n", self.namespace, "link", "set", DEVICE, state)
        shown = json.loads(_run("ip", "-n", self.namespace, "-j", "link", "show", DEVICE))
        if ("UP" in shown[0]["flags"]) != (state == "up"):
            raise RuntimeError(f"{self.label}: {DEVICE} did not go {state}: {shown}")

    def link_down(self) -> None:
        """Cut the host's network: packets to and from it are lost, nothing is closed."""
        self._set_link("down")

    def link_up(self) -> None:
        """Restore the host's network; returns once libvirtd answers over it."""
        self._set_link("up")
        self.wait_answering()

    def reboot(self) -> None:
        """A host reboot: the host vanishes from the network (no connection is closed
        cleanly, as with a power cut), libvirtd, its guests and everything else of the host
        are killed, the runtime directory is emptied (as /run is at boot), then libvirtd
        (and sshd) start again and the network comes back. Persistent domain definitions
        stay; guests are shut off. Returns once libvirtd answers."""
        self.link_down()
        # the host's user's processes and everything in its namespace (sshd's root parts)
        pids = set(fleetslots.pids_of_uid(self.uid))
        pids.update(fleetslots.pids_in_namespace(self.namespace))
        fleetslots.kill_and_reap(sorted(pids))
        for process in (self.process, self.sshd):
            if process is not None:
                process.wait()
        self.process = self.sshd = None
        shutil.rmtree(self.runtime_dir)
        self._make_dir(self.runtime_dir, 0o700)
        self.launch()
        self.link_up()

    def stop(self) -> None:
        """End this host's daemons (not its guests): the lab's cleanup does the rest."""
        for process in (self.process, self.sshd):
            if process is not None and process.poll() is None:
                process.kill()
            if process is not None:
                process.wait()
        self.process = self.sshd = None

    # --- building -----------------------------------------------------------------------

    def _make_dir(self, path: Path, mode: int = 0o755) -> None:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)

    def build(self, ca: CertificateAuthority) -> None:
        """The host's user, directories, certificates, config and node XML."""
        fleetslots.run_with_passwd_lock(
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            str(self.home),
            "--shell",
            "/bin/sh",
            "--password",
            "*",
            self.user,
        )
        entry = pwd.getpwnam(self.user)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.dir.mkdir(mode=0o755, parents=True)
        for path in (self.home, self.dir / "config", self.dir / "cache"):
            self._make_dir(path)
        self._make_dir(self.runtime_dir, 0o700)
        settings = [
            f'host_uuid = "{self.host_uuid}"',
            'log_outputs = "3:stderr"',
            "keepalive_interval = 5",
            "keepalive_count = 5",
        ]
        if self.transport == "tls":
            pki = self.dir / "pki"
            ca_file, cert_file, key_file = ca.server(pki, self.label, self.ip)
            for path in (pki, ca_file, cert_file, key_file):
                os.chown(path, self.uid, self.gid)
            settings += [
                "listen_tls = 1",
                "listen_tcp = 0",
                f'listen_addr = "{self.ip}"',
                f'tls_port = "{TLS_PORT}"',
                f'key_file = "{key_file}"',
                f'cert_file = "{cert_file}"',
                f'ca_file = "{ca_file}"',
                "tls_no_verify_certificate = 0",
                'auth_tls = "none"',
            ]
        self.config.write_text("\n".join(settings) + "\n")
        if self.kind == "test":
            self.node_xml.write_text(self._node_xml())
            os.chmod(self.node_xml, 0o644)

    def _node_xml(self) -> str:
        """The test driver's state: the host's domains, every third one shut off."""
        domains = []
        for number, name in enumerate(self.domains, start=1):
            running = number % 3 != 0
            domains.append(
                "  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>\n"
                f"    <name>{name}</name>\n"
                f"    <uuid>{uuid.uuid4()}</uuid>\n"
                f"    <memory unit='MiB'>{256 * (1 + number % 4)}</memory>\n"
                f"    <vcpu>{1 + number % 2}</vcpu>\n"
                "    <os><type>hvm</type></os>\n"
                f"    <test:runstate>{1 if running else 5}</test:runstate>\n"
                "  </domain>\n"
            )
        header = f"<!-- test fleet host {self.label} ({self.ip}) -->\n"
        return f"{header}<node>\n{''.join(domains)}</node>\n"

    def build_sshd(self, gateway_key: Path) -> str:
        """This host's sshd (its own host key, the gateway's key for the host's user);
        returns the known_hosts line for it."""
        self.sshd_dir.mkdir(mode=0o755)
        host_key = self.sshd_dir / "ssh_host_ed25519_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.label, "-f", str(host_key))
        authorized = self.sshd_dir / "authorized_keys"
        shutil.copyfile(gateway_key.with_suffix(".pub"), authorized)
        os.chmod(authorized, 0o644)
        # StrictModes would refuse a key file below /var/tmp (world-writable); the files
        # here are root's and 0644, which is what StrictModes wants to make sure of.
        (self.sshd_dir / "sshd_config").write_text(
            f"ListenAddress {self.ip}\n"
            "Port 22\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.sshd_dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "StrictModes no\n"
            f"AllowUsers {self.user}\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "X11Forwarding no\n"
            "AllowTcpForwarding no\n"
            "PrintMotd no\n"
        )
        kind, blob = (self.sshd_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        return f"{self.ip} {kind} {blob}\n"


class _VirshOnPty:
    """``virsh`` on a pty (pexpect), as typed by an admin; ended by ``close()`` or by leaving
    a ``with`` block."""

    def __init__(self, lab: FleetLab, argv: list[str]) -> None:
        import pexpect

        self.session = pexpect.spawn(
            "virsh",
            argv,
            env=lab.environment,
            timeout=30,
            encoding="utf-8",
            codec_errors="replace",
        )

    def close(self) -> None:
        self.session.terminate(force=True)
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GuestConsole(_VirshOnPty):
    """``virsh console`` of one guest, as an admin runs it on the gateway."""

    def __init__(self, lab: FleetLab, host: FleetHost, name: str, force: bool = False) -> None:
        super().__init__(lab, ["-c", host.uri, "console", name, *(["--force"] if force else [])])
        self.host = host
        self.name = name
        self.session.expect("Escape character is")
        self.attempts = 0

    def send(self, text: str) -> None:
        self.session.send(text)

    def expect(self, pattern: str, timeout: float = 30.0) -> str:
        """Wait for ``pattern`` (a regular expression); returns what came before it."""
        self.session.expect(pattern, timeout=timeout)
        return str(self.session.before)

    def run(self, command: str, answer: str | None = None, timeout: float = 30.0) -> None:
        """Type ``command`` at the guest's shell and wait for ``answer`` (if given), then
        for the prompt."""
        self.send(command + "\r")
        if answer is not None:
            self.expect(answer, timeout)
        self.expect(PROMPT, timeout)

    def wait_shell(self, timeout: float = BOOT_SECONDS) -> None:
        """Wait until the guest's shell evaluates what is typed (it has booted): an echo of
        arithmetic, typed again every few seconds, until its result comes back."""
        import pexpect

        deadline = time.monotonic() + timeout
        while True:
            self.attempts += 1
            marker = f"fleet-ready-{self.attempts}"
            self.send(f"\recho {marker}-$((40 + 2))\r")
            try:
                self.session.expect(f"{marker}-42", timeout=3)
                self.session.expect(PROMPT, timeout=10)
                return
            except pexpect.TIMEOUT:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} on {self.host.label}: no shell within {timeout} s; "
                        f"console: {self.session.before!r}"
                    ) from None

    def close(self) -> None:
        """Detach (Ctrl-]) and wait for virsh to end."""
        import pexpect

        if self.session.isalive():
            self.session.send("\x1d")
            try:
                self.session.expect(pexpect.EOF, timeout=10)
            except pexpect.TIMEOUT:
                pass
        super().close()


class VirshShell(_VirshOnPty):
    """An admin's interactive ``virsh`` on one host, with keepalives every ``interval`` s,
    ``count`` of them unanswered ending the connection (``virsh -k INTERVAL -K COUNT``)."""

    PROMPT = "virsh # "

    def __init__(self, lab: FleetLab, host: FleetHost, interval: int, count: int) -> None:
        super().__init__(lab, ["-k", str(interval), "-K", str(count), "-c", host.uri])
        self.session.expect_exact(self.PROMPT)

    def run(self, command: str, timeout: float = 30.0) -> str:
        """Run ``command``; returns everything printed until the next prompt."""
        self.session.sendline(command)
        self.session.expect_exact(self.PROMPT, timeout=timeout)
        return str(self.session.before)


class FleetLab:
    """The fleet: build with ``start()`` (or ``with FleetLab(specs) as lab``), remove with
    ``close()``. Hosts are labelled node1, node2... in the order of ``specs``."""

    def __init__(self, specs: Sequence[HostSpec], name: str = "vpsshell-fleet") -> None:
        if not specs:
            raise ValueError("a fleet needs at least one host")
        self.specs = tuple(specs)
        self.name = name
        self.hosts: list[FleetHost] = []
        self.plan: fleetslots.Plan | None = None  # the slot's names, once taken
        self.root = Path()
        self.start_seconds = 0.0
        self._started = False
        self._guest_images: tuple[Path, Path] | None = None

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> FleetLab:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> FleetLab:
        """Build the fleet and start every host; returns once all of them answer."""
        if os.geteuid() != 0:
            raise PermissionError("a test fleet needs root (namespaces, a bridge, OS users)")
        self._check_tools()
        began = time.monotonic()
        self.root = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self._started = True
        try:
            plan = self.plan = fleetslots.reserve(self.root, len(self.specs))
            self.hosts = [
                FleetHost(self, plan, spec, index) for index, spec in enumerate(self.specs, start=1)
            ]
            self._build(plan)
            for host in self.hosts:
                host.launch()
            for host in self.hosts:
                host.wait_answering()
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def close(self) -> None:
        """Remove everything the lab made; safe to call twice and on a half-built lab."""
        if not self._started:
            return
        self._started = False
        for host in self.hosts:
            host.stop()
        if self.plan is not None:
            fleetslots.release(self.plan)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _check_tools(self) -> None:
        needed = dict(TOOLS)
        if any(spec.transport == "ssh" for spec in self.specs):
            needed.update(SSH_TOOLS)
            needed.update(FAR_SIDE_TOOLS)
        if any(spec.kind == "qemu" for spec in self.specs):
            needed.update(QEMU_TOOLS)
        missing = [
            f"{tool} ({package})"
            for tool, package in needed.items()
            if shutil.which(tool, path=PATH) is None
        ]
        if missing:
            raise RuntimeError(f"the test fleet needs: {', '.join(missing)}")

    @property
    def gateway_dir(self) -> Path:
        return self.root / "gateway"

    @property
    def client_pki(self) -> Path:
        """The gateway's ``pkipath``: cacert.pem, clientcert.pem, clientkey.pem."""
        return self.gateway_dir / "pki"

    @property
    def ssh_dir(self) -> Path:
        """The gateway's ssh files: key pair, known_hosts, ssh_config, the ``ssh`` wrapper."""
        return self.gateway_dir / "ssh"

    @property
    def gateway_ip(self) -> str:
        assert self.plan is not None, "the lab is not started"
        return self.plan.gateway_ip

    @property
    def environment(self) -> dict[str, str]:
        """What the lab's virsh runs with: nothing of root's own libvirt or shell setup."""
        return {"PATH": PATH, "LANG": "C.UTF-8", "HOME": str(self.gateway_dir)}

    def _build(self, plan: fleetslots.Plan) -> None:
        self._build_network(plan)
        self.gateway_dir.mkdir(mode=0o700)
        self.ca = CertificateAuthority(self.root / "ca", f"{self.name} CA slot {plan.slot}")
        self.ca.client(self.client_pki, "gateway")
        for host in self.hosts:
            host.build(self.ca)
        if any(host.transport == "ssh" for host in self.hosts):
            self._build_ssh()
        if any(host.kind == "qemu" for host in self.hosts):
            images = self.root / "guest"
            self._guest_images = build_guest(images)

    def _build_network(self, plan: fleetslots.Plan) -> None:
        # no STP delay; and bridged frames (host to host, e.g. migration) never meet the
        # machine's iptables, whatever its FORWARD policy
        _run(
            "ip",
            "link",
            "add",
            plan.bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "nf_call_iptables",
            "0",
        )
        _run("ip", "addr", "add", f"{plan.gateway_ip}/{plan.network.prefixlen}", "dev", plan.bridge)
        _run("ip", "link", "set", plan.bridge, "up")
        for host in self.hosts:
            _run("ip", "netns", "add", host.namespace)
            _run(
                "ip",
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                DEVICE,
                "netns",
                host.namespace,
            )
            _run("ip", "link", "set", host.veth, "master", plan.bridge, "up")
            inside = ("ip", "-n", host.namespace)
            _run(*inside, "addr", "add", f"{host.ip}/{plan.network.prefixlen}", "dev", DEVICE)
            _run(*inside, "link", "set", DEVICE, "up")
            _run(*inside, "link", "set", "lo", "up")

    def _build_ssh(self) -> None:
        ssh = self.ssh_dir
        ssh.mkdir(mode=0o700)
        key = ssh / "id_ed25519"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gateway", "-f", str(key))
        known_hosts = "".join(
            host.build_sshd(key) for host in self.hosts if host.transport == "ssh"
        )
        (ssh / "known_hosts").write_text(known_hosts)
        (ssh / "ssh_config").write_text(
            f"UserKnownHostsFile {ssh / 'known_hosts'}\n"
            "GlobalKnownHostsFile /dev/null\n"
            "StrictHostKeyChecking yes\n"
            "IdentitiesOnly yes\n"
            "BatchMode yes\n"
            "ConnectTimeout 10\n"
        )
        wrapper = ssh / "ssh"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# the gateway's ssh for the test fleet: the lab's config, never root's ~/.ssh\n"
            f'exec {SSH} -F {ssh / "ssh_config"} "$@"\n'
        )
        os.chmod(wrapper, 0o700)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation

    # --- hosts --------------------------------------------------------------------------

    def host(self, label: str) -> FleetHost:
        for host in self.hosts:
            if host.label == label:
                return host
        raise KeyError(label)

    def of_kind(self, kind: Kind, transport: Transport | None = None) -> list[FleetHost]:
        return [
            host
            for host in self.hosts
            if host.kind == kind and (transport is None or host.transport == transport)
        ]

    @property
    def uris(self) -> dict[str, str]:
        return {host.label: host.uri for host in self.hosts}

    def hosts_toml(self, host_keys: Mapping[str, object] | None = None) -> str:
        """A ``[[backend.hosts]]`` table per host (``host_keys`` added to each)."""
        tables = []
        for host in self.hosts:
            lines = [
                "[[backend.hosts]]",
                f'name = "{host.label}"',
                f"uri = {_toml_value(host.uri)}",
            ]
            lines += [f"{key} = {_toml_value(value)}" for key, value in (host_keys or {}).items()]
            tables.append("\n".join(lines) + "\n")
        return "\n".join(tables)

    def backend_toml(
        self,
        backend_keys: Mapping[str, object] | None = None,
        host_keys: Mapping[str, object] | None = None,
    ) -> str:
        """The whole ``[backend]`` table of a vpsshelld on this fleet (type = "libvirt")."""
        lines = ["[backend]", 'type = "libvirt"']
        lines += [f"{key} = {_toml_value(value)}" for key, value in (backend_keys or {}).items()]
        return "\n".join(lines) + "\n\n" + self.hosts_toml(host_keys)

    def configure(self, helper: Any, **backend_keys: object) -> None:
        """Point a ``harness.Helper`` (not started yet) at this fleet: its ``[backend]``
        table, which its config ends with, becomes this fleet's."""
        helper.set_backend(self.backend_toml(backend_keys))

    # --- an admin's tools ---------------------------------------------------------------

    def _resolve(self, host: FleetHost | str) -> FleetHost:
        return host if isinstance(host, FleetHost) else self.host(host)

    def virsh(
        self, host: FleetHost | str, *args: str, timeout: float = 60.0, uri: str | None = None
    ) -> VirshResult:
        """``virsh -c URI ARGS...`` on the gateway side (``uri``: another than the host's)."""
        target = self._resolve(host)
        try:
            done = subprocess.run(
                ["virsh", "-c", uri or target.uri, *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.environment,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as expired:
            return VirshResult(None, _text(expired.stdout), _text(expired.stderr))
        return VirshResult(done.returncode, done.stdout, done.stderr)

    def virsh_shell(self, host: FleetHost | str, interval: int = 1, count: int = 2) -> VirshShell:
        return VirshShell(self, self._resolve(host), interval, count)

    def domain_state(self, host: FleetHost | str, name: str) -> str | None:
        """``virsh domstate`` (``running``, ``shut off``...); None if the host has no such
        domain."""
        result = self.virsh(host, "domstate", name)
        if not result.ok:
            if "failed to get domain" in result.err or "Domain not found" in result.err:
                return None
            raise RuntimeError(f"virsh domstate {name} on {host}: {result.err.strip()}")
        return result.out.strip()

    def define_guest(self, host: FleetHost | str, name: str) -> str:
        """Define the tiny guest as ``name`` on a qemu host (shut off); returns its UUID."""
        target = self._resolve(host)
        if target.kind != "qemu" or self._guest_images is None:
            raise ValueError(f"{target.label} is not a qemu host")
        kernel, initrd = self._guest_images
        guest_uuid = str(uuid.uuid4())
        xml = string.Template(GUEST_TEMPLATE.read_text()).substitute(
            name=name, uuid=guest_uuid, kernel=kernel, initrd=initrd
        )
        path = self.root / "guest" / f"{name}.xml"
        path.write_text(xml)
        self._check(target, "define", str(path))
        return guest_uuid

    def start_guest(self, host: FleetHost | str, name: str) -> None:
        self._check(self._resolve(host), "start", name)

    def _check(self, host: FleetHost, *args: str, timeout: float = 60.0) -> VirshResult:
        result = self.virsh(host, *args, timeout=timeout)
        if not result.ok:
            raise RuntimeError(
                f"virsh {' '.join(args)} on {host.label} failed ({result.code}): "
                f"{result.err.strip()}"
            )
        return result

    def console(self, host: FleetHost | str, name: str, force: bool = False) -> GuestConsole:
        """The guest's serial console (``virsh console``; ``force`` takes it from another
        client, such as a vpsshelld console hub)."""
        return GuestConsole(self, self._resolve(host), name, force)

    def wait_guest_shell(
        self, host: FleetHost | str, name: str, timeout: float = BOOT_SECONDS
    ) -> None:
        """Wait until the guest has booted to its shell (on its console)."""
        with self.console(host, name) as console:
            console.wait_shell(timeout)

    def migrate(
        self,
        name: str,
        source: FleetHost | str,
        destination: FleetHost | str,
        timeout: float = 300.0,
    ) -> float:
        """Live-migrate ``name`` as an admin does: ``virsh migrate --live --persistent
        --undefinesource`` (the definition moves too: no shut-off copy stays behind).

        virsh on the gateway talks to both hosts (no peer-to-peer: the hosts hold no client
        certificate). The migration stream goes from QEMU to QEMU straight over the test
        network: ``--migrateuri tcp://DST_IP`` names the destination's address, where
        otherwise libvirt would use the destination's hostname, which here resolves to this
        machine's own address, outside every namespace. Returns the seconds it took.
        """
        src, dst = self._resolve(source), self._resolve(destination)
        began = time.monotonic()
        self._check(
            src,
            "migrate",
            "--live",
            "--persistent",
            "--undefinesource",
            name,
            dst.uri,
            "--migrateuri",
            f"tcp://{dst.ip}",
            timeout=timeout,
        )
        return time.monotonic() - began

    def pki_without_client_certificate(self) -> Path:
        """A ``pkipath`` that trusts the fleet's CA and has no client certificate."""
        return ca_only(self.root / "clients" / "no-certificate", self.ca)

    def pki_of_another_ca(self) -> Path:
        """A ``pkipath`` with a client certificate signed by a CA the hosts do not trust."""
        other = CertificateAuthority(self.root / "other-ca", "not the fleet's CA")
        return other.client(self.root / "clients" / "other-ca", "intruder", (self.ca.cert,))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def host_specs(qemu: int = 0, test: int = 0, domains: int = 0, ssh_test: int = 0) -> list[HostSpec]:
    """A common mix: ``qemu`` QEMU hosts and ``test`` test-driver hosts over TLS, then
    ``ssh_test`` test-driver hosts over SSH; test hosts with ``domains`` domains each."""
    return (
        [HostSpec("qemu") for _ in range(qemu)]
        + [HostSpec("test", domains=domains) for _ in range(test)]
        + [HostSpec("test", "ssh", domains) for _ in range(ssh_test)]
    )
