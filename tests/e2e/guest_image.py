"""Builds the tiny test guest: Debian's kernel plus a busybox initramfs made here, no disk.

The guest boots straight to a root shell on its serial console (``ttyS0``), answers the ACPI
power button (busybox ``acpid`` runs ``poweroff``, which is what libvirt's ``shutdown`` and
``reboot`` press) and has magic SysRq enabled. Everything comes from Debian packages already on
the machine (``linux-image-amd64``, ``busybox-static``); nothing is downloaded.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import re
import shutil
import stat
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
PROMPT = "guest# "
READY_LINE = "vpsshell-test-guest: ready"

# The modules the power button needs (the Debian kernel has them as modules, not built in).
MODULES = ("kernel/drivers/acpi/button.ko", "kernel/drivers/input/evdev.ko")

INIT_TAB = """\
::sysinit:/etc/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/bin/reboot
::shutdown:/bin/echo vpsshell-test-guest: going down
"""

RC_S = f"""\
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in /lib/modules/*.ko; do insmod "$module"; done
echo 1 > /proc/sys/kernel/sysrq
acpid -c /etc/acpi -l /dev/null
echo "{READY_LINE}"
"""

PROFILE = f"""\
export PS1='{PROMPT}'
export PATH=/bin
"""

# busybox acpid maps the power button to the event "PWRF" and runs /etc/acpi/PWRF/00000080
# (with its output on /dev/null: it daemonizes).
POWER_BUTTON = """\
#!/bin/sh
echo "vpsshell-test-guest: power button" > /dev/console
poweroff
"""


def find_kernel() -> tuple[Path, str]:
    """The newest installed Debian kernel and its version (not necessarily the running one)."""
    candidates = []
    for path in glob.glob("/boot/vmlinuz-*"):
        version = path.removeprefix("/boot/vmlinuz-")
        if os.path.isdir(f"/lib/modules/{version}"):
            candidates.append((_version_key(version), Path(path), version))
    if not candidates:
        raise FileNotFoundError(
            "no kernel in /boot with modules (apt-get install linux-image-amd64)"
        )
    _, path, version = max(candidates)
    return path, version


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


class _Cpio:
    """A minimal "newc" cpio archive writer: what the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.inode = 1

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.buffer.write(header + encoded)
        self._pad()
        self.buffer.write(data)
        self._pad()
        self.inode += 1

    def _pad(self) -> None:
        self.buffer.write(b"\0" * (-self.buffer.tell() % 4))

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self.buffer.getvalue()


def build_initramfs(modules_dir: Path) -> bytes:
    """The gzipped initramfs: busybox (as /bin/busybox and /init), config files, modules."""
    archive = _Cpio()
    for directory in (
        "bin",
        "dev",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
        "root",
    ):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add(
        "dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)
    )  # replaced by devtmpfs, needed before it
    busybox = BUSYBOX.read_bytes()
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    for applet in ("sh", "init", "mount", "insmod", "acpid", "poweroff", "reboot", "echo"):
        archive.add(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
    archive.add("init", stat.S_IFLNK | 0o777, b"bin/busybox")
    archive.add("etc/inittab", stat.S_IFREG | 0o644, INIT_TAB.encode())
    archive.add("etc/rcS", stat.S_IFREG | 0o755, RC_S.encode())
    archive.add("etc/profile", stat.S_IFREG | 0o644, PROFILE.encode())
    archive.add("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, POWER_BUTTON.encode())
    for module in MODULES:
        data = (modules_dir / module).read_bytes()
        archive.add(f"lib/modules/{Path(module).name}", stat.S_IFREG | 0o644, data)
    return gzip.compress(archive.finish(), compresslevel=6)


def build_guest(directory: Path) -> tuple[Path, Path]:
    """Write ``vmlinuz`` and ``initramfs.gz`` into ``directory`` (world-readable, so QEMU
    running as libvirt's unprivileged user can read them); returns their paths."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    kernel, version = find_kernel()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    kernel_copy = directory / "vmlinuz"
    shutil.copyfile(kernel, kernel_copy)
    initramfs = directory / "initramfs.gz"
    initramfs.write_bytes(build_initramfs(Path("/lib/modules") / version))
    for path in (kernel_copy, initramfs):
        os.chmod(path, 0o644)
    return kernel_copy, initramfs
