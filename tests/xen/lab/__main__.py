"""The Xen lab as a command (as root):

    python3 tests/xen/lab build             # images, from the cache when they are there
    python3 tests/xen/lab boot [--share DIR] # build if needed, boot, wait for dom0's ssh
    python3 tests/xen/lab ssh [COMMAND]      # a command (or a shell) in dom0, as root
    python3 tests/xen/lab uri                # dom0's libvirtd: virsh -c "$(... uri)" list
    python3 tests/xen/lab console            # the serial console: dom0's hvc0 (Ctrl-] quits)
    python3 tests/xen/lab status | stop
    python3 tests/xen/lab preflight          # can this machine run the lab? (exit 0 if so)
    python3 tests/xen/lab clean              # stop, and remove the whole cache

``--name NAME`` picks one of several labs (default ``default``). The tests drive the same
classes (tests/xen/conftest.py); this is for a person looking into the lab.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import sys
import termios
import tty
from pathlib import Path

if __package__ in (None, ""):  # run as a directory: python3 tests/xen/lab
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.host import CACHE, log  # noqa: E402
from lab.images import ensure_images  # noqa: E402
from lab.machine import DESTINATION, Machine, preflight  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xenlab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="default")
    parser.add_argument("--share", type=Path, help="a host directory, read-only at /mnt/host")
    parser.add_argument(
        "command",
        choices=("build", "boot", "ssh", "uri", "console", "status", "stop", "preflight", "clean"),
    )
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.command == "preflight":
        problem = preflight()
        print(problem or "this machine can run the Xen lab")
        return 1 if problem else 0
    if os.geteuid() != 0:
        print("the Xen lab needs root", file=sys.stderr)
        return 2
    if args.command == "clean":
        if (CACHE / "run").is_dir():
            for lab in (CACHE / "run").iterdir():
                if lab.is_dir() and (lab / "qemu.pid").exists():
                    print(f"the Xen lab {lab.name!r} is running: stop it first", file=sys.stderr)
                    return 1
        shutil.rmtree(CACHE, ignore_errors=True)
        log(f"removed {CACHE}")
        return 0

    images = ensure_images()
    machine = Machine(images, name=args.name, share=args.share)
    if args.command == "build":
        versions = images.versions()
        log(f"images in {images.directory}: Xen {versions['xen']}, Linux {versions['kernel']}")
    elif args.command == "boot":
        with machine.lock(wait=False):
            if machine.running():
                log(f"the Xen lab {args.name!r} is already running")
            else:
                machine.boot()
    elif args.command in ("ssh", "uri") and not machine.running():
        print(f"the Xen lab {args.name!r} is not running", file=sys.stderr)
        return 1
    elif args.command == "ssh":
        ssh = machine.ssh_options()
        os.execvp(ssh[0], [*ssh, *(["-t"] if not args.words else []), DESTINATION, *args.words])
    elif args.command == "uri":
        print(machine.libvirt_uri())
    elif args.command == "console":
        return _console(machine)
    elif args.command == "status":
        if not machine.running():
            print("not running")
            return 1
        result = machine.run("xl list")
        print(result.stdout or f"dom0 does not answer ssh: {result.stderr}")
    elif args.command == "stop":
        with machine.lock(wait=False):
            machine.stop()
    return 0


def _console(machine: Machine) -> int:
    """The serial console in this terminal, raw: dom0's hvc0 shell; Ctrl-A three times
    switches input to Xen; Ctrl-] quits."""
    if not machine.running():
        print("not running", file=sys.stderr)
        return 1
    with socket.socket(socket.AF_UNIX) as serial:
        serial.connect(str(machine.run_dir / "serial.sock"))
        terminal = sys.stdin.fileno()
        saved = termios.tcgetattr(terminal)
        tty.setraw(terminal)
        os.write(1, b"[the Xen lab's serial console; Ctrl-] quits]\r\n")
        try:
            while True:
                ready, _, _ = select.select([terminal, serial], [], [])
                if serial in ready:
                    data = serial.recv(4096)
                    if not data:
                        break
                    os.write(1, data)
                if terminal in ready:
                    data = os.read(terminal, 1024)
                    if b"\x1d" in data:
                        break
                    serial.sendall(data)
        finally:
            termios.tcsetattr(terminal, termios.TCSADRAIN, saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
