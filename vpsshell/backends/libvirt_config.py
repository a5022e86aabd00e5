"""The ``[backend]`` table of the libvirt backend, validated without importing libvirt-python.

Kept apart from the backend itself so that ``vpsshelld --check-config`` reports a typo in the
table even on a machine where libvirt-python is not installed yet. It never connects anywhere.

Keepalive is set per host with libvirt's own names (``keepalive_interval`` seconds between
probes, ``keepalive_count`` unanswered probes before the connection is closed, as in
libvirtd.conf and ``virsh -k/-K``): a host that stops answering is noticed after about
``interval * (count + 1)`` seconds even when nobody asks it anything. The table's own values are
the defaults of every host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vpsshell.backends.base import (
    BackendConfigError,
    check_backend_table,
    check_host_label,
    check_seconds,
    check_table,
    check_timeout,
)

DEFAULT_TIMEOUT_SECONDS = 10.0
_TIMEOUT_RANGE = (0.1, 300.0)
DEFAULT_KEEPALIVE_INTERVAL = 5  # libvirt's own client default
DEFAULT_KEEPALIVE_COUNT = 3
_KEEPALIVE_INTERVAL_RANGE = (1, 600)
_KEEPALIVE_COUNT_RANGE = (1, 100)
DEFAULT_REFRESH_SECONDS = 60.0  # a full inventory of each host this often, besides events
_REFRESH_RANGE = (1.0, 3600.0)
_URI_MAX = 1024
# scheme "://" then anything printable without spaces: libvirt parses the rest itself
_URI_RE = re.compile(r"[a-z][a-z0-9+.-]*://[\x21-\x7e]*")
_KEEPALIVE_KEYS = ("keepalive_interval", "keepalive_count")
_TABLE_KEYS = frozenset({"type", "hosts", "timeout_seconds", "refresh_seconds", *_KEEPALIVE_KEYS})
_HOST_KEYS = frozenset({"name", "uri", *_KEEPALIVE_KEYS})


@dataclass(frozen=True)
class HostConfig:
    """One ``[[backend.hosts]]`` entry: a libvirt connection and the label tenants see."""

    name: str
    uri: str
    keepalive_interval: int = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count: int = DEFAULT_KEEPALIVE_COUNT


@dataclass(frozen=True)
class LibvirtConfig:
    hosts: tuple[HostConfig, ...]
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS  # one libvirt call, connecting included
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS


def parse_libvirt_config(table: dict[str, Any]) -> LibvirtConfig:
    """Validate the ``[backend]`` table of a libvirt backend."""
    check_backend_table(table, "libvirt", _TABLE_KEYS)
    timeout = check_timeout(table, DEFAULT_TIMEOUT_SECONDS, *_TIMEOUT_RANGE)
    refresh = check_seconds(table, "refresh_seconds", DEFAULT_REFRESH_SECONDS, *_REFRESH_RANGE)
    keepalive = _keepalive("backend", table, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_COUNT)
    entries = table.get("hosts")
    if not isinstance(entries, list) or not entries:
        raise BackendConfigError(
            'backend.hosts: at least one [[backend.hosts]] table (name = "node1", '
            'uri = "qemu:///system") is needed'
        )
    hosts = [
        _parse_host(f"backend.hosts[{i}]", entry, keepalive) for i, entry in enumerate(entries)
    ]
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
    return LibvirtConfig(hosts=tuple(hosts), timeout_seconds=timeout, refresh_seconds=refresh)


def _keepalive(where: str, table: dict[str, Any], interval: int, count: int) -> tuple[int, int]:
    """``keepalive_interval`` and ``keepalive_count`` of a table, whole numbers as libvirt
    takes them; ``interval`` and ``count`` where the table has none."""
    found = []
    for key, default, (low, high) in (
        ("keepalive_interval", interval, _KEEPALIVE_INTERVAL_RANGE),
        ("keepalive_count", count, _KEEPALIVE_COUNT_RANGE),
    ):
        value = table.get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise BackendConfigError(
                f"{where}.{key}: must be a whole number from {low} to {high}, got {value!r}"
            )
        found.append(value)
    return found[0], found[1]


def _parse_host(where: str, entry: Any, keepalive: tuple[int, int]) -> HostConfig:
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
    interval, count = _keepalive(where, entry, *keepalive)
    return HostConfig(name=name, uri=uri, keepalive_interval=interval, keepalive_count=count)
