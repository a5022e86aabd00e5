"""What the lab builder and runner need from the host: its cache directory, commands, logging.

Nothing here builds or boots anything; it only runs commands (argv lists, never a shell string
built from outside input) and says what it does on stderr. It never touches the host outside
the cache directory (``VPSSHELL_XENLAB_CACHE``, default ``/var/tmp/vpsshell-xenlab``) except
for the temporary mounts of a build, which it always undoes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

CACHE = Path(os.environ.get("VPSSHELL_XENLAB_CACHE", "/var/tmp/vpsshell-xenlab"))
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Debian packages the host needs to build and run the lab (run-tests installs them as root).
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "qemu-system-x86_64": "qemu-system-x86",
    "cpio": "cpio",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "depmod": "kmod",
    "dpkg-deb": "dpkg",
    "chroot": "coreutils",
}


def log(message: str) -> None:
    print(f"[xenlab {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(
    argv: list[str],
    *,
    log_to: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> str:
    """Run ``argv``; its output goes to ``log_to`` (appended) or is returned. A failure raises
    with the end of the output, so the error says what the tool said."""
    environment = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
    if log_to is not None:
        with log_to.open("ab") as sink:
            sink.write(f"$ {' '.join(argv)}\n".encode())
            sink.flush()
            proc = subprocess.run(
                argv,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=environment,
                timeout=timeout,
                check=False,
            )
        if proc.returncode != 0:
            tail = log_to.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{argv[0]} failed (exit {proc.returncode}), {log_to}:\n{tail}")
        return ""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result.stdout


def missing_tools() -> list[str]:
    """The Debian packages that would bring the host tools the lab lacks."""
    return sorted(
        {package for tool, package in HOST_TOOLS.items() if not shutil.which(tool, path=PATH)}
    )


def digest(parts: Iterable[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()[:16]


def files_digest(paths: Iterable[Path], base: Path) -> list[bytes]:
    """Each file's path (relative to ``base``), mode and content, in a stable order: what a
    cache key hashes, so that a renamed, made-executable or edited file rebuilds."""
    parts = []
    for path in sorted(paths):
        relative = path.relative_to(base).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        parts += [relative.encode(), mode.encode(), path.read_bytes()]
    return parts


@contextlib.contextmanager
def locked(path: Path, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one build, one lab run at a time), saying so when
    another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RuntimeError(f"{what} is in use by another process ({path})") from None
            log(f"waiting for {what}: another process holds {path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_tree(path: Path) -> None:
    """Remove ``path``, first unmounting what an interrupted build left mounted below it (else
    removing it would reach through a bind mount into the download cache)."""
    below = str(path.resolve()) + "/"
    mounted = [
        line.split()[1].replace("\\040", " ")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    for point in sorted((m for m in mounted if m.startswith(below)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)
    shutil.rmtree(path, ignore_errors=True)


def keep_newest(directory: Path, prefix: str, keep: int) -> None:
    """Remove all but the ``keep`` most recently used cache entries named ``prefix*``."""
    entries = sorted(
        (p for p in directory.glob(f"{prefix}*") if p.is_dir()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[keep:]:
        log(f"removing old cache entry {old.name}")
        remove_tree(old)
