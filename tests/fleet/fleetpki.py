"""The test fleet's PKI, made with certtool (gnutls-bin) the way libvirt's PKI page describes it.

One CA per lab; per host a server certificate whose subject alternative name is the host's IP
address (libvirt checks the host part of ``qemu+tls://IP/...`` against it); client
certificates for the gateway, laid out as libvirt's ``pkipath=DIR`` URI parameter expects
them (``cacert.pem``, ``clientcert.pem``, ``clientkey.pem``). Keys are RSA: libvirt refuses a
certificate whose key usage lacks key encipherment, which certtool never sets for ECDSA keys.

Only for tests: keys are unencrypted and everything expires after two days.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CERTTOOL = "certtool"
KEY_BITS = 2048  # 90 ms a key here; 3072 doubles that for nothing a test needs
VALID_DAYS = 2

# certtool's template lines, per role (libvirt checks key usage and purpose of each)
_CA_TEMPLATE = "ca\ncert_signing_key\n"
_SERVER_TEMPLATE = "tls_www_server\nencryption_key\nsigning_key\n"
_CLIENT_TEMPLATE = "tls_www_client\nencryption_key\nsigning_key\n"


def _certtool(*args: str) -> None:
    done = subprocess.run(
        [CERTTOOL, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise RuntimeError(f"certtool {' '.join(args)} failed: {done.stderr.strip()[-1000:]}")


class CertificateAuthority:
    """A CA in ``directory`` (``ca-key.pem``, ``cacert.pem``) that signs hosts and clients."""

    def __init__(self, directory: Path, name: str) -> None:
        if shutil.which(CERTTOOL) is None:
            raise RuntimeError(f"{CERTTOOL} is missing (apt-get install gnutls-bin)")
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.key = directory / "ca-key.pem"
        self.cert = directory / "cacert.pem"
        self._new_key(self.key)
        template = self._template("ca", f"cn = {name}\n{_CA_TEMPLATE}")
        _certtool(
            "--generate-self-signed",
            "--load-privkey",
            str(self.key),
            "--template",
            str(template),
            "--outfile",
            str(self.cert),
        )

    def _template(self, stem: str, body: str) -> Path:
        path = self.directory / f"{stem}.info"
        path.write_text(
            f"organization = vpsshell test fleet\nexpiration_days = {VALID_DAYS}\n{body}"
        )
        return path

    @staticmethod
    def _new_key(path: Path) -> None:
        _certtool(
            "--generate-privkey",
            "--key-type=rsa",
            f"--bits={KEY_BITS}",
            "--outfile",
            str(path),
        )
        os.chmod(path, 0o600)

    def _sign(self, stem: str, body: str, key: Path, cert: Path) -> None:
        self._new_key(key)
        _certtool(
            "--generate-certificate",
            "--load-privkey",
            str(key),
            "--load-ca-certificate",
            str(self.cert),
            "--load-ca-privkey",
            str(self.key),
            "--template",
            str(self._template(stem, body)),
            "--outfile",
            str(cert),
        )

    def server(self, directory: Path, name: str, ip: str) -> tuple[Path, Path, Path]:
        """A server certificate for ``ip`` in ``directory``: (cacert, servercert, serverkey)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key = directory / "servercert.pem", directory / "serverkey.pem"
        self._sign(
            f"server-{name}", f"cn = {name}\nip_address = {ip}\n{_SERVER_TEMPLATE}", key, cert
        )
        ca_copy = directory / "cacert.pem"
        shutil.copyfile(self.cert, ca_copy)
        return ca_copy, cert, key

    def client(self, directory: Path, name: str, trust: tuple[Path, ...] = ()) -> Path:
        """A ``pkipath`` directory for a client called ``name``; ``trust`` adds CA certificates
        to its ``cacert.pem`` beside this CA (a client of another CA needs its own CA there
        to pass libvirt's check of its own certificate, and this one to check the servers)."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sign(
            f"client-{name}",
            f"cn = {name}\n{_CLIENT_TEMPLATE}",
            directory / "clientkey.pem",
            directory / "clientcert.pem",
        )
        bundle = "".join(path.read_text() for path in (self.cert, *trust))
        (directory / "cacert.pem").write_text(bundle)
        return directory


def ca_only(directory: Path, ca: CertificateAuthority) -> Path:
    """A ``pkipath`` directory that trusts the CA but holds no client certificate."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(ca.cert, directory / "cacert.pem")
    return directory
