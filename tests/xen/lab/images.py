"""The Xen lab's boot images, made from the Debian base (debian.py) and the lab's own files.

``ensure_images()`` returns the images, building what the cache lacks:

- ``xen``: the hypervisor, unpacked (QEMU's multiboot loader cannot read gzip);
- ``vmlinuz``: Debian's kernel, booted as dom0 (PV);
- ``dom0.cpio``: dom0's whole root fs as an uncompressed initramfs (it boots faster under TCG
  than a compressed one): the Debian base, the kernel modules dom0 loads, busybox init, the
  files under ``files/dom0/`` (start script, Xen defaults, sshd, libvirtd, the guest's
  config), the guest's kernel and initramfs, the lab's ssh key and dom0's ssh host key;
- ``ssh/id_ed25519``: the key root logs into dom0 with; ``ssh/host_ed25519_key.pub``: dom0's
  host key, which its ssh clients check (machine.py writes their known_hosts file).

The guest (domU) is Debian's kernel as a gzip'd ELF (libxc would otherwise xz-decompress the
bzImage in dom0 on every ``xl create``, about 10 s under TCG) and a busybox initramfs made of
``files/domu/``. Images are cached in ``CACHE/images-KEY``, KEY hashing the base's key, this
file and everything under ``files/``: any change to the lab's configuration rebuilds them
(a few seconds), a change to its packages rebuilds the base first. Builds take a lock, so
concurrent runs build once. This module never boots anything (machine.py does).
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import debian
from .host import CACHE, digest, files_digest, keep_newest, locked, log, remove_tree, run

HERE = Path(__file__).resolve().parent
FILES = HERE / "files"

# Kernel modules dom0 loads (their dependencies come along): Xen's back ends, the bridge for
# guests' vifs and nftables on it (the bridge family is built into nf_tables), QEMU's e1000
# NIC and the virtio-9p share.
DOM0_MODULES = [
    "xenfs",
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xen-blkback",
    "xen-netback",
    "loop",
    "bridge",
    "crc32c_generic",  # libcrc32c (nf_tables needs it) asks the crypto API for crc32c
    "nf_tables",
    "nft_meta_bridge",  # meta expressions (iifname) in the bridge family
    "tun",
    "e1000",
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "ext4",
    "overlay",
]
DOMU_MODULES = ["xen-blkfront", "xen-netfront"]

# symlinks made in dom0's root fs: busybox is init (Debian's minbase has none)
DOM0_LINKS = {f"usr/sbin/{tool}": "/bin/busybox" for tool in ("init", "halt", "poweroff", "reboot")}
DOMU_PAYLOAD = "var/lib/xenlab/domu"  # in dom0: the guest's kernel and initramfs


@dataclass(frozen=True)
class Images:
    directory: Path

    @property
    def xen(self) -> Path:
        return self.directory / "xen"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.directory / "dom0.cpio"

    @property
    def ssh_key(self) -> Path:
        return self.directory / "ssh" / "id_ed25519"

    @property
    def host_key(self) -> Path:
        """The public half of dom0's ssh host key."""
        return self.directory / "ssh" / "host_ed25519_key.pub"

    def versions(self) -> dict[str, str]:
        return dict(json.loads((self.directory / "versions.json").read_text()))


def image_key() -> str:
    own = [Path(__file__).resolve(), *(p for p in FILES.rglob("*") if p.is_file())]
    return digest([debian.base_key().encode(), *files_digest(own, HERE)])


def ensure_images() -> Images:
    """The current images, built first if the cache has none for this builder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o700)  # it holds the lab's private ssh key
    with locked(CACHE / "build.lock", "the lab's image cache"):
        base = _cached(f"base-{debian.base_key()}", debian.build_base, "Debian base")
        images = _cached(
            f"images-{image_key()}", lambda dest: _build_images(base, dest), "lab images"
        )
        keep_newest(CACHE, "base-", 2)
        keep_newest(CACHE, "images-", 2)
    return Images(images)


def _cached(name: str, build: Callable[[Path], None], what: str) -> Path:
    """``CACHE/name``, built into a temporary directory and renamed when complete (an
    interrupted build leaves nothing that looks finished)."""
    final = CACHE / name
    if final.is_dir():
        os.utime(final)  # recently used: kept by keep_newest
        return final
    partial = CACHE / f"partial-{name}"
    remove_tree(partial)
    partial.mkdir()
    began = time.monotonic()
    log(f"building the {what} in {partial}")
    build(partial)
    partial.rename(final)
    log(f"{what} built in {time.monotonic() - began:.0f} s: {final}")
    return final


def _build_images(base: Path, dest: Path) -> None:
    root = dest / "dom0-root"
    log("copying the Debian base")
    run(["cp", "-a", str(base / "root"), str(root)])
    release = json.loads((base / "versions.json").read_text())["kernel"]
    modules = base / "kernel" / "lib" / "modules" / release
    _copy_modules(modules, root / "lib/modules" / release, DOM0_MODULES)
    _copy_tree(FILES / "dom0", root)
    for link, target in DOM0_LINKS.items():
        path = root / link
        path.unlink(missing_ok=True)
        path.symlink_to(target)

    log("building the guest's kernel and busybox initramfs")
    payload = root / DOMU_PAYLOAD
    payload.mkdir(parents=True)
    _guest_kernel(base / "vmlinuz", payload / "vmlinux.gz")
    _guest_initramfs(root / "usr/bin/busybox", modules, payload / "initrd.gz", dest)

    (dest / "ssh").mkdir()
    key = dest / "ssh/id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenlab", "-f", str(key)])
    authorized = root / "root/.ssh/authorized_keys"
    authorized.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(dest / "ssh/id_ed25519.pub", authorized)
    _host_key(root / "etc/ssh", dest / "ssh/host_ed25519_key.pub")

    log("packing dom0's initramfs")
    _pack(root, dest / "dom0.cpio")
    shutil.rmtree(root)
    with gzip.open(base / "xen.gz") as compressed, (dest / "xen").open("wb") as plain:
        shutil.copyfileobj(compressed, plain)
    shutil.copy(base / "vmlinuz", dest / "vmlinuz")
    shutil.copy(base / "versions.json", dest / "versions.json")


def _host_key(ssh_dir: Path, public: Path) -> None:
    """dom0's one ssh host key, new with each build (Debian's, made when the base was built,
    are removed), its public half kept at ``public``: machine.py writes it into the
    known_hosts file that ssh clients of the lab check dom0 against."""
    for old in ssh_dir.glob("ssh_host_*"):
        old.unlink()
    host_key = ssh_dir / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "xenlab-dom0", "-f", str(host_key)])
    shutil.copy(ssh_dir / "ssh_host_ed25519_key.pub", public)


def _copy_tree(source: Path, target: Path) -> None:
    """The files under ``source`` into ``target``, replacing what is there, modes kept."""
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        else:
            destination.unlink(missing_ok=True)
            shutil.copy(path, destination)
            os.chmod(destination, 0o755 if os.access(path, os.X_OK) else 0o644)


def _copy_modules(source: Path, target: Path, wanted: list[str]) -> None:
    """Modules ``wanted`` and what they depend on (modules.dep), then depmod for them."""
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (source / "modules.dep").read_text().splitlines():
        module, _, rest = line.partition(":")
        depends[module] = rest.split()
        by_name[Path(module).name.split(".ko")[0].replace("-", "_")] = module
    builtin = (source / "modules.builtin").read_text()
    todo = []
    for name in wanted:
        key = name.replace("-", "_")
        if key in by_name:
            todo.append(by_name[key])
        elif f"/{name}.ko" not in builtin and f"/{key}.ko" not in builtin:
            raise RuntimeError(f"kernel module {name} is neither a module nor built in")
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(depends[module])
    for module in seen:
        (target / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / module, target / module)
    for index in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(source / index, target / index)
    root = target.parents[2]  # .../lib/modules/RELEASE -> the root fs
    run(["depmod", "-b", str(root), target.name])


def _guest_kernel(bzimage: Path, target: Path) -> None:
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise RuntimeError(f"{bzimage}: the kernel's payload is not xz")
    elf = lzma.LZMADecompressor().decompress(data[start:])
    target.write_bytes(gzip.compress(elf, compresslevel=1))


def _guest_initramfs(busybox: Path, modules: Path, target: Path, scratch: Path) -> None:
    root = scratch / "domu-root"
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "root"):
        (root / directory).mkdir(parents=True)
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in run([str(busybox), "--list-full"]).split():
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    (root / "init").symlink_to("/sbin/init")
    _copy_tree(FILES / "domu", root)
    release = modules.name
    _copy_modules(modules, root / "lib/modules" / release, DOMU_MODULES)
    _pack(root, scratch / "domu.cpio")
    with (scratch / "domu.cpio").open("rb") as plain, gzip.open(target, "wb", 9) as packed:
        shutil.copyfileobj(plain, packed)
    (scratch / "domu.cpio").unlink()
    shutil.rmtree(root)


def _pack(root: Path, target: Path) -> None:
    """``root`` as a newc cpio archive (what the kernel unpacks as its initramfs)."""
    listing = run(["find", ".", "-xdev"], cwd=root)
    with target.open("wb") as archive:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=listing.encode(),
            stdout=archive,
            cwd=root,
            check=True,
        )
