"""The ``[backend]`` table of the libvirt backend, validated without importing libvirt-python.

Kept apart from the backend itself so that ``vpsshelld --check-config`` reports a typo in the
table even on a machine where libvirt-python is not installed yet. It never connects anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vpsshell.backends.base import (
    BackendConfigError,
    check_backend_table,
    check_host_label,
    check_table,
    check_timeout,
)

DEFAULT_TIMEOUT_SECONDS = 10.0
_TIMEOUT_RANGE = (0.1, 300.0)
_URI_MAX = 1024
# scheme "://" then anything printable without spaces: libvirt parses the rest itself
_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[\x21-\x7e]*")
_TABLE_KEYS = frozenset({"type", "hosts", "timeout_seconds"})
_HOST_KEYS = frozenset({"name", "uri"})


@dataclass(frozen=True)
class HostConfig:
    """One ``[[backend.hosts]]`` entry: a libvirt connection and the label tenants see."""

    name: str
    uri: str


@dataclass(frozen=True)
class LibvirtConfig:
    hosts: tuple[HostConfig, ...]
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # one libvirt call, connecting included


def parse_libvirt_config(table: dict[str, Any]) -> LibvirtConfig:
    """Validate the ``[backend]`` table of a libvirt backend."""
    check_backend_table(table, "libvirt", _TABLE_KEYS)
    timeout = check_timeout(table, DEFAULT_TIMEOUT_SECONDS, *_TIMEOUT_RANGE)
    entries = table.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise BackendConfigError(
            'backend.hosts: at least one [[backend.hosts]] table (name = "node1", '
            'uri = "qemu:///system") is needed'
        )
    hosts = [_parse_host(f"backend.hosts[{i}]", entry) for i, entry in enumerate(entries)]
    for field in ("name", "uri"):
        seen: dict[str, int] = {}
        for index, host in enumerate(hosts):
            value = getattr(host, field)
            if value in seen:
                raise BackendConfigError(
                    f"backend.hosts[{index}].{field}: {value!r} is already the {field} of "
                    f"backend.hosts[{seen[value]}]"
                )
            seen[value] = index
    return LibvirtConfig(hosts=tuple(hosts), timeout_seconds=timeout)


def _parse_host(where: str, entry: Any) -> HostConfig:
    check_table(where, entry, _HOST_KEYS)
    missing = [key for key in ("name", "uri") if key not in entry]
    if missing:
        raise BackendConfigError(f"{where}: missing {', '.join(missing)}")
    name, uri = entry["name"], entry["uri"]
    check_host_label(f"{where}.name", name)
    if not isinstance(uri, str) or len(uri) > _URI_MAX or not _URI_RE.fullmatch(uri):
        raise BackendConfigError(
            f"{where}.uri: must be a libvirt URI such as qemu:///system, xen:///system, "
            f"qemu+ssh://host/system or test:///abs/path.xml, got {uri!r}"
        )
    if uri.startswith("test://") and not uri.startswith("test:///"):
        raise BackendConfigError(
            f"{where}.uri: a test driver URI names an absolute file (test:///abs/path.xml) "
            f"or test:///default, got {uri!r}"
        )
    return HostConfig(name=name, uri=uri)
