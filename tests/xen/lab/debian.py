"""What the Xen lab takes from Debian: a bookworm root file system for dom0 with the Xen tools
installed, Debian's kernel (for dom0 and the guests) and the Xen hypervisor of the same version.

This is the slow first stage of the build (debootstrap, apt; about a minute and 150 MB of
downloads the first time), cached in ``CACHE/base-KEY`` where KEY hashes this file: changing a
package list here rebuilds it, changing the lab's configuration (images.py, files/) does not.
Downloaded packages are kept in ``CACHE/debs`` for the next rebuild.

Everything comes from the Debian mirror that apt on this machine uses (its sources files;
``VPSSHELL_XENLAB_MIRROR`` and ``VPSSHELL_XENLAB_SECURITY_MIRROR`` override them), with apt's
own ``Acquire`` settings of this machine. Nothing else is downloaded. The hypervisor is never
installed on the host: its package is only unpacked into the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .host import CACHE, digest, files_digest, log, run

SUITE = "bookworm"  # Xen 4.17, Linux 6.1
XEN_SERIES = "4.17"
KERNEL_METAPACKAGE = "linux-image-amd64"

# dom0's packages (with their dependencies, without recommends). The Xen tools must be the
# hypervisor's version: both come from the same apt state below. Extensions of the lab add
# theirs here.
DOM0_PACKAGES = (
    f"xen-utils-{XEN_SERIES}",  # xl, xenstored, xenconsoled, Debian's /etc/init.d/xen
    "xenstore-utils",
    "libvirt-daemon-driver-xen",  # libvirtd's libxl driver, for clients over xen+ssh://
    "libvirt-daemon",  # libvirtd, and virt-ssh-helper: the far end of libvirt's ssh transport
    "libvirt-clients",  # virsh, to see in dom0 what the libxl driver sees
    "python3",
    "python3-venv",  # the tests install vpsshell into a venv in dom0, from wheels
    "python3-pip",
    "openssh-server",
    "iproute2",
    "bridge-utils",  # Xen's vif-bridge hotplug script
    "nftables",  # the shipped anti-spoofing hook's rules on the guests' vifs
    "tcpdump",  # captures on xenbr0: what the guests' frames look like when they reach dom0
    "kmod",
    "procps",
    "busybox-static",  # dom0's init, and the guests' whole user space
)

# Left out of dom0's root fs: it lives in RAM (an initramfs), and nobody reads these there.
PRUNED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/lib/apt/lists",
    "var/cache/apt",
    "usr/lib/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d",
    # libvirtd's QEMU driver: dom0's libvirtd serves Xen only, and without the libvirt-qemu
    # user (made by libvirt-daemon-system, which the lab does not install) the driver fails
    # to initialize and takes libvirtd down with it
    "usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so",
)


def base_key() -> str:
    here = Path(__file__).resolve()
    return digest(files_digest([here], here.parent))


def apt_sources() -> tuple[str, str]:
    """The Debian mirror and security mirror that this machine's apt uses."""
    main = os.environ.get("VPSSHELL_XENLAB_MIRROR", "")
    security = os.environ.get("VPSSHELL_XENLAB_SECURITY_MIRROR", "")
    for uri, suites in _configured_sources():
        if any(suite.endswith("-security") for suite in suites):
            security = security or uri
        elif "/debian" in uri:
            main = main or uri
    if not main or not security:
        raise RuntimeError(
            "no Debian mirror (and security mirror) in /etc/apt/sources.list*: set "
            "VPSSHELL_XENLAB_MIRROR and VPSSHELL_XENLAB_SECURITY_MIRROR"
        )
    return main.rstrip("/"), security.rstrip("/")


def _configured_sources() -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of each enabled ``deb`` source, deb822 files and one-line lists."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ", "\t")) and ":" in line:
                    name, value = line.split(":", 1)
                    fields[name.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                yield uri, fields.get("suites", "").split()
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]]


def build_base(dest: Path) -> None:
    """Fill ``dest`` with ``root/`` (dom0's root fs), ``kernel/`` (vmlinuz and its modules),
    ``xen.gz`` and ``versions.json``."""
    mirror, security = apt_sources()
    root = dest / "root"
    build_log = dest / "build.log"
    debs = CACHE / "debs"
    (CACHE / "debootstrap").mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)

    log(f"debootstrap {SUITE} (minbase) from {mirror}")
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--cache-dir={CACHE / 'debootstrap'}",
            SUITE,
            str(root),
            mirror,
        ],
        log_to=build_log,
    )
    (root / "etc/apt/sources.list").write_text(
        f"deb {mirror} {SUITE} main\n"
        f"deb {mirror} {SUITE}-updates main\n"
        f"deb {security} {SUITE}-security main\n"
    )
    host_settings = _copy_host_apt_settings(root)
    no_services = root / "usr/sbin/policy-rc.d"  # packages must not start daemons here
    no_services.write_text("#!/bin/sh\nexit 101\n")
    no_services.chmod(0o755)

    log(f"installing dom0 packages: {' '.join(DOM0_PACKAGES)}")
    with _mounted(root, debs):
        chroot = ["chroot", str(root)]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run([*chroot, "apt-get", "update", "-q"], log_to=build_log, env=env)
        run(
            [*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", *DOM0_PACKAGES],
            log_to=build_log,
            env=env,
        )
        xen_version = run(
            [*chroot, "dpkg-query", "-W", "-f=${Version}", f"xen-utils-{XEN_SERIES}"]
        ).strip()
        kernel_package = _kernel_package(chroot)
        kernel_version = _candidate(chroot, kernel_package)
        hypervisor = f"xen-hypervisor-{XEN_SERIES}-amd64"
        log(f"downloading {kernel_package} {kernel_version} and {hypervisor} {xen_version}")
        run(
            [
                *chroot,
                "sh",
                "-c",
                'cd /var/cache/apt/archives && apt-get download -q "$1" "$2"',
                "download",
                f"{kernel_package}={kernel_version}",
                f"{hypervisor}={xen_version}",
            ],
            log_to=build_log,
        )
    kernel_deb = debs / _deb_name(kernel_package, kernel_version)
    xen_deb = debs / _deb_name(hypervisor, xen_version)
    run(["dpkg-deb", "-x", str(kernel_deb), str(dest / "kernel")])
    run(["dpkg-deb", "-x", str(xen_deb), str(dest / "hypervisor")])
    [release] = [p.name for p in (dest / "kernel/lib/modules").iterdir()]
    run(["depmod", "-b", str(dest / "kernel"), release])  # the package ships no modules.dep
    shutil.copy(dest / f"kernel/boot/vmlinuz-{release}", dest / "vmlinuz")
    shutil.copy(dest / f"hypervisor/boot/xen-{XEN_SERIES}-amd64.gz", dest / "xen.gz")
    shutil.rmtree(dest / "hypervisor")

    for setting in host_settings:
        setting.unlink()
    no_services.unlink()
    for relative in PRUNED:
        path = root / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir()
        elif path.exists():
            path.unlink()
    (dest / "versions.json").write_text(
        json.dumps(
            {"suite": SUITE, "xen": xen_version, "kernel": release, "mirror": mirror}, indent=2
        )
        + "\n"
    )


def _copy_host_apt_settings(root: Path) -> list[Path]:
    """This machine's apt ``Acquire`` settings (proxies, validity checks), for the build's
    apt in the chroot as for the host's own; removed again before the root fs is used."""
    copied = []
    for path in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        if path.is_file() and "Acquire" in path.read_text(errors="replace"):
            target = root / "etc/apt/apt.conf.d" / f"00xenlab-host-{path.name}"
            shutil.copy(path, target)
            copied.append(target)
    return copied


@contextmanager
def _mounted(root: Path, debs: Path) -> Iterator[None]:
    """/proc for the packages' scripts, and the cache of downloaded packages as apt's."""
    mounts = [(["-t", "proc", "proc"], root / "proc")]
    mounts.append((["--bind", str(debs)], root / "var/cache/apt/archives"))
    done: list[Path] = []
    try:
        for args, target in mounts:
            target.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, str(target)])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            run(["umount", str(target)])


def _kernel_package(chroot: list[str]) -> str:
    """The versioned kernel package that ``linux-image-amd64`` depends on."""
    depends = run([*chroot, "apt-cache", "depends", KERNEL_METAPACKAGE])
    found = re.search(r"Depends: (linux-image-\d\S*-amd64)\b", depends)
    if not found:
        raise RuntimeError(f"no versioned kernel in: apt-cache depends {KERNEL_METAPACKAGE}")
    return found.group(1)


def _candidate(chroot: list[str], package: str) -> str:
    shown = run([*chroot, "apt-cache", "show", "--no-all-versions", package])
    found = re.search(r"^Version: (\S+)$", shown, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no candidate version of {package}")
    return found.group(1)


def _deb_name(package: str, version: str) -> str:
    """The file name ``apt-get download`` gives a package (an epoch's colon escaped)."""
    return f"{package}_{version.replace(':', '%3a')}_amd64.deb"
