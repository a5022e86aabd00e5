"""Runs the Xen lab: QEMU (TCG) booting Xen, dom0 from the images, reached by ssh.

QEMU runs in the background (``-daemonize``) with its state in ``CACHE/run/NAME/``: pid file,
serial console (a Unix socket, also logged to ``serial.log``), monitor socket, the ssh port,
the ssh connection-sharing socket, ``known_hosts`` and ``libvirt-ssh``. Several labs can run
side by side under different names (two Xen hosts for a migration, say; ``qemu_args`` adds the
NIC that links them); one test run holds a lab's lock while it uses it.

Networking: QEMU's user network with ``restrict=on``, so the lab reaches nothing outside
itself; the only way in is ssh, forwarded from a free port on 127.0.0.1. ssh shares one
connection (a fresh login costs about 2.5 s under TCG, a shared one about 0.3 s) and checks
dom0's host key against ``known_hosts`` in the run directory, written at boot from the image's
key. dom0 runs libvirtd with the libxl driver: ``libvirt_uri()`` is how a libvirt client on
this machine reaches it (xen+ssh through the same port, the same host key check). Nothing here
listens on anything but 127.0.0.1 and Unix sockets in the run directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from .host import CACHE, PATH, locked, log, missing_tools
from .images import Images

RUN = CACHE / "run"
LIBVIRT_SSH = "libvirt-ssh"  # in a lab's run directory
DESTINATION = "root@127.0.0.1"
READY = "XENLAB-DOM0-READY"
CRASHED = ("Panic on CPU", "crashed on cpu", "Kernel panic")
NEEDS_MEMORY_MIB = 3072  # QEMU takes about 2.2 GB with 2048 MiB of guest memory

# Xen's command line. Under QEMU 7.2's TCG, Xen must not use SMAP (else 64-bit PV guests,
# dom0 first, fault on their own stack right after starting) nor XSAVE (else dom0 processes
# die of SIGSEGV or #GP while domains are created and destroyed: 5 to 11 killed in 4 minutes
# of create/destroy cycles without xsave=0, none in 28 cycles with it). Real hardware needs
# neither.
XEN_TCG_OPTIONS = ("smap=0", "xsave=0")


def preflight() -> str:
    """Why this machine cannot run the lab now, or "" if it can."""
    if os.geteuid() != 0:
        return "the Xen lab needs root (debootstrap, mounts, QEMU)"
    missing = missing_tools()
    if missing:
        return f"the Xen lab needs apt-get install {' '.join(missing)}"
    available = _available_memory_mib()
    if available < NEEDS_MEMORY_MIB:
        return f"the Xen lab needs {NEEDS_MEMORY_MIB} MiB of free memory ({available} MiB free)"
    return ""


def _available_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


@dataclass
class Machine:
    """One lab: Xen and dom0 in one QEMU process."""

    images: Images
    name: str = "default"
    memory_mib: int = 2048  # Xen, dom0 and the guests
    # dom0's root fs lives in it, and while the kernel unpacks it the packed archive does too
    dom0_memory_mib: int = 1024
    cpus: int = 2
    share: Path | None = None  # exported read-only to dom0 at /mnt/host (virtio-9p)
    xen_options: tuple[str, ...] = ()  # appended to Xen's command line: they win
    qemu_args: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return RUN / self.name

    @contextlib.contextmanager
    def lock(self, wait: bool = True) -> Iterator[None]:
        """Use of this lab by one process at a time (a test run, the benchmark)."""
        with locked(RUN / f"{self.name}.lock", f"the Xen lab {self.name!r}", wait=wait):
            yield

    def running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    @property
    def ssh_port(self) -> int:
        return int((self.run_dir / "ssh-port").read_text())

    def _host_key_options(self) -> list[str]:
        """ssh options that accept dom0's host key and no other."""
        return [
            *("-o", f"UserKnownHostsFile={self.run_dir / 'known_hosts'}"),
            *("-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"),
        ]

    def ssh_options(self) -> list[str]:
        """``ssh`` and its options, without the destination (``DESTINATION``)."""
        return [
            "ssh",
            *self._host_key_options(),
            *("-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"),
            *("-o", "ControlMaster=auto", "-o", "ControlPersist=600"),
            *("-o", f"ControlPath={self.run_dir / 'ssh-mux'}"),
            *("-i", str(self.images.ssh_key), "-p", str(self.ssh_port)),
        ]

    def libvirt_uri(self) -> str:
        """dom0's libvirtd (the libxl driver) for a libvirt client on this machine, as root:
        ``xen+ssh://`` through the forwarded port with the lab's key. libvirt's ssh transport
        takes no known_hosts file, so its ``ssh`` is the run directory's ``libvirt-ssh``
        (``command=``), which checks dom0's host key as ``ssh_options`` does."""
        query = urlencode(
            {
                "keyfile": self.images.ssh_key,
                "no_tty": 1,  # never ask anything: libvirt's client has no one to ask
                "command": self.run_dir / LIBVIRT_SSH,
            },
            safe="/",
        )
        return f"xen+ssh://{DESTINATION}:{self.ssh_port}/system?{query}"

    def _write_ssh_files(self, port: int) -> None:
        """known_hosts with dom0's host key at this boot's port, and ``libvirt-ssh``."""
        host_key = self.images.host_key.read_text().strip()
        (self.run_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
        ssh = shutil.which("ssh", path=PATH) or "ssh"
        options = " ".join(shlex.quote(option) for option in self._host_key_options())
        wrapper = self.run_dir / LIBVIRT_SSH
        wrapper.write_text(
            "#!/bin/sh\n"
            "# ssh for libvirt clients of the Xen lab (a xen+ssh URI's command=): dom0's host\n"
            "# key only, and none of this machine's ssh configuration (-F none)\n"
            f'exec {shlex.quote(ssh)} -F none {options} -o ConnectTimeout=10 "$@"\n'
        )
        wrapper.chmod(0o755)

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``command`` run by dom0's root shell."""
        return subprocess.run(
            [*self.ssh_options(), DESTINATION, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def serial_log(self) -> str:
        path = self.run_dir / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def xen_command_line(self) -> list[str]:
        return [
            "console=com1",
            "com1=115200,8n1",
            f"dom0_mem={self.dom0_memory_mib}M,max:{self.dom0_memory_mib}M",
            f"dom0_max_vcpus={self.cpus}",
            "bootscrub=false",  # scrubbing 2 GiB under TCG takes seconds
            "loglvl=all",
            "guest_loglvl=all",
            *XEN_TCG_OPTIONS,
            *self.xen_options,
        ]

    def boot(self, timeout: float = 600) -> float:
        """Start QEMU and wait until dom0 answers ssh; returns the seconds it took."""
        if self.running():
            raise RuntimeError(f"the Xen lab {self.name!r} is already running")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        port = _free_port()
        (self.run_dir / "ssh-port").write_text(f"{port}\n")
        self._write_ssh_files(port)
        share: list[str] = []
        if self.share is not None:
            share = [
                *("-fsdev", f"local,id=fs0,path={self.share},security_model=none,readonly=on"),
                *("-device", "virtio-9p-pci,fsdev=fs0,mount_tag=hostshare"),
            ]
        run = self.run_dir
        dom0 = f"{self.images.kernel} console=hvc0 earlyprintk=xen rdinit=/sbin/init"
        argv = [
            "qemu-system-x86_64",
            *("-name", f"xenlab-{self.name}", "-machine", "pc"),
            *("-accel", "tcg,thread=multi", "-cpu", "max"),
            *("-smp", str(self.cpus), "-m", str(self.memory_mib)),
            *("-kernel", str(self.images.xen), "-append", " ".join(self.xen_command_line())),
            *("-initrd", f"{dom0},{self.images.initramfs}"),
            *("-display", "none", "-vga", "none", "-no-reboot"),
            "-chardev",
            f"socket,id=serial,path={run / 'serial.sock'},server=on,wait=off,"
            f"logfile={run / 'serial.log'}",
            *("-serial", "chardev:serial"),
            *("-monitor", f"unix:{run / 'monitor.sock'},server=on,wait=off"),
            "-netdev",
            f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            *("-device", "e1000,netdev=net0"),
            *share,
            *self.qemu_args,
            *("-daemonize", "-pidfile", str(run / "qemu.pid")),
        ]
        log(f"booting the Xen lab {self.name!r}: ssh on 127.0.0.1:{port}, state in {run}")
        began = time.monotonic()
        subprocess.run(argv, check=True, env={"PATH": PATH}, capture_output=True, timeout=60)
        deadline = began + timeout
        while READY not in self.serial_log():
            self._check_alive(deadline)
            time.sleep(0.5)
        while self.run("true", timeout=30).returncode != 0:
            self._check_alive(deadline)
            time.sleep(0.5)
        seconds = time.monotonic() - began
        log(f"dom0 answers ssh after {seconds:.0f} s")
        return seconds

    def _check_alive(self, deadline: float) -> None:
        serial = self.serial_log()
        problem = ""
        if not self.running():
            problem = "QEMU exited while booting"
        elif any(sign in serial for sign in CRASHED):
            problem = "Xen or dom0 crashed while booting"
        elif time.monotonic() > deadline:
            problem = "dom0 did not come up in time"
        if problem:
            self.stop()
            raise RuntimeError(f"{problem}; the serial console said:\n{serial[-4000:]}")

    def stop(self) -> None:
        """Power the lab off (dom0 lives in RAM: nothing to save)."""
        pid = self._pid()
        mux = self.run_dir / "ssh-mux"
        if mux.exists():
            subprocess.run(
                [*self.ssh_options(), "-O", "exit", DESTINATION], capture_output=True, check=False
            )
        if pid is None or not self.running():
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as monitor:
            monitor.settimeout(5)
            monitor.connect(str(self.run_dir / "monitor.sock"))
            monitor.sendall(b"quit\n")
            # read until QEMU closes the monitor as it exits: closing first could leave the
            # command unread, and QEMU running until the SIGKILL below (10 s later)
            while monitor.recv(4096):
                pass
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.running():
            os.kill(pid, signal.SIGKILL)
        (self.run_dir / "qemu.pid").unlink(missing_ok=True)
        log(f"the Xen lab {self.name!r} is off")

    def _pid(self) -> int | None:
        try:
            return int((self.run_dir / "qemu.pid").read_text())
        except (OSError, ValueError):
            return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
