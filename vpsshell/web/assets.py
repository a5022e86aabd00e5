"""xterm.js for the console page: fetched from the npm registry at install time, pinned, checked.

The page's terminal is xterm.js (MIT), with its fit addon. Neither is in vpsshell's source
tree: ``vpsshell-web fetch-assets`` downloads the pinned versions' tarballs from the npm
registry (or takes them from a directory, for a host without network), checks each against
the registry's ``sha512`` integrity string recorded here, and writes only the files the page
needs, with each package's licence, into the assets directory that ``vpsshell-web`` serves.
A tarball whose hash differs is refused and nothing is written. Changing a version means
changing its integrity string here, in the same commit (``npm view PACKAGE@VERSION
dist.integrity``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass

REGISTRY = "https://registry.npmjs.org"
DOWNLOAD_TIMEOUT_SECONDS = 60
MAX_TARBALL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class NpmPackage:
    name: str  # "@xterm/xterm"
    version: str
    integrity: str  # the registry's dist.integrity: "sha512-" and base64
    files: tuple[tuple[str, str], ...]  # (path in the tarball, name in the assets directory)

    @property
    def tarball_name(self) -> str:
        return f"{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.tarball_name}"


PACKAGES = (
    NpmPackage(
        "@xterm/xterm",
        "5.5.0",
        "sha512-hqJHYaQb5OptNunnyAnkHyM8aCjZ1MEIDTQu1iIbbTD/xops91NB5yq1ZK/dC2JDbVWtF23zUtl9JE2NqwT87A==",
        (
            ("package/lib/xterm.js", "xterm.js"),
            ("package/css/xterm.css", "xterm.css"),
            ("package/LICENSE", "LICENSE.xterm"),
        ),
    ),
    NpmPackage(
        "@xterm/addon-fit",
        "0.10.0",
        "sha512-UFYkDm4HUahf2lnEyHvio51TNGiLK66mqP2JoATy7hRZeXaGMRDr00JiSF7m63vR5WKATF605yEggJKsw0JpMQ==",
        (
            ("package/lib/addon-fit.js", "addon-fit.js"),
            ("package/LICENSE", "LICENSE.addon-fit"),
        ),
    ),
)
ASSET_NAMES = tuple(name for package in PACKAGES for _, name in package.files)
MANIFEST = "versions.json"  # what was installed, from where


class AssetError(Exception):
    """A tarball could not be had, or is not the one pinned; nothing was written."""


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _download(package: NpmPackage) -> bytes:
    try:
        # the URL is REGISTRY (https) and pinned names, never anything from outside
        with urllib.request.urlopen(package.url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:  # noqa: S310
            data: bytes = response.read(MAX_TARBALL_BYTES + 1)
    except OSError as exc:
        raise AssetError(f"cannot download {package.url}: {exc}") from None
    if len(data) > MAX_TARBALL_BYTES:
        raise AssetError(f"{package.url} is larger than {MAX_TARBALL_BYTES} bytes")
    return data


def _tarball(package: NpmPackage, tarball_dir: str | None) -> bytes:
    if tarball_dir is None:
        return _download(package)
    path = os.path.join(tarball_dir, package.tarball_name)
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_TARBALL_BYTES + 1)
    except OSError as exc:
        raise AssetError(f"cannot read {path}: {exc.strerror}") from None


def _members(package: NpmPackage, data: bytes) -> dict[str, bytes]:
    """The files the page needs from a checked tarball (only regular files, by exact name)."""
    found: dict[str, bytes] = {}
    wanted = dict(package.files)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            if member.name in wanted and member.isfile():
                extracted = archive.extractfile(member)
                assert extracted is not None
                found[wanted[member.name]] = extracted.read()
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise AssetError(f"{package.name}@{package.version} lacks {', '.join(missing)}")
    return found


def fetch_assets(directory: str, tarball_dir: str | None = None) -> list[str]:
    """Put the pinned packages' files into ``directory`` (made 0755); returns what was
    written. Every tarball is checked before anything is written."""
    files: dict[str, bytes] = {}
    manifest = {}
    for package in PACKAGES:
        data = _tarball(package, tarball_dir)
        got = integrity_of(data)
        if got != package.integrity:
            raise AssetError(
                f"{package.name}@{package.version}: integrity {got} is not the pinned "
                f"{package.integrity}; refusing it"
            )
        files.update(_members(package, data))
        manifest[package.name] = {"version": package.version, "integrity": package.integrity}
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    for name, content in sorted(files.items()):
        # each file whole or not at all: a half-written xterm.js would be served as it is
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    return sorted(files)


def missing_assets(directory: str) -> list[str]:
    """The files the page needs that ``directory`` lacks (all of them if it does not exist)."""
    return [name for name in ASSET_NAMES if not os.path.isfile(os.path.join(directory, name))]
