"""What the libvirt backend last saw on each host: domain records by host, by UUID and by name.

A gateway answers ``list`` and resolves names from this record instead of asking every host
on every request, so that a request costs in proportion to the domains it is about, and a host
that stops answering delays nobody whose domains live elsewhere. The record is kept fresh by
the backend (a full inventory when a host connects and every ``refresh_seconds``, a re-read of
one domain after each of its events and after each action); it never talks to libvirt itself
and imports nothing of libvirt-python.

One UUID may be on two hosts at once: during a live migration (running on the source, paused
on the destination) and after one that left the source's persistent definition behind (shut
off). ``choose_copy`` decides which copy is the domain, and refuses to guess when it cannot
tell, so that no command acts on a stale copy.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpsshell.backends.base import ACTIVE_STATES, DomainState


@dataclass(frozen=True)
class DomainRecord:
    """What one domain looked like on one host, when last read."""

    name: str
    uuid: str
    domain_id: int  # libvirt's runtime id: for the uptime book, never for lookups
    state: DomainState
    vcpus: int
    memory_kib: int


class AmbiguousCopies(Exception):
    """Copies of one UUID on several hosts, none of them clearly the domain."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(", ".join(hosts))
        self.hosts = hosts


def choose_copy(
    copies: list[tuple[str, DomainRecord]], last_active: str | None
) -> tuple[str, DomainRecord] | None:
    """The copy that is the domain, among ``(host, record)`` copies of one UUID.

    A running copy wins (the source of a live migration until it hands over); then any other
    active copy; then, all shut off, the copy on the host where the domain was last seen active
    (a migration's destination, not the source's left-over definition). Raises AmbiguousCopies
    when that still leaves more than one."""
    if len(copies) <= 1:
        return copies[0] if copies else None
    for wanted in ({DomainState.RUNNING}, ACTIVE_STATES):
        found = [copy for copy in copies if copy[1].state in wanted]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            copies = found
            break
    preferred = [copy for copy in copies if copy[0] == last_active]
    if len(preferred) == 1:
        return preferred[0]
    raise AmbiguousCopies(sorted(host for host, _ in copies))


class Inventory:
    """Domain records per host, with indexes by name and by UUID kept in step."""

    def __init__(self) -> None:
        self._hosts: dict[str, dict[str, DomainRecord]] = {}  # host -> uuid -> record
        self._by_name: dict[str, dict[str, str]] = {}  # name -> host -> uuid
        self._by_uuid: dict[str, set[str]] = {}  # uuid -> hosts
        self.complete: set[str] = set()  # hosts whose whole inventory has been read once

    def replace(self, host: str, records: list[DomainRecord]) -> dict[str, DomainRecord]:
        """A full inventory of ``host``; returns what was recorded before, by UUID."""
        before = dict(self._hosts.get(host, {}))
        for uuid in list(before):
            self.remove(host, uuid)
        for record in records:
            self.put(host, record)
        self.complete.add(host)
        return before

    def put(self, host: str, record: DomainRecord) -> None:
        on_host = self._hosts.setdefault(host, {})
        old = on_host.get(record.uuid)
        if old is not None and old.name != record.name:  # renamed
            self._unname(host, old)
        on_host[record.uuid] = record
        self._by_name.setdefault(record.name, {})[host] = record.uuid
        self._by_uuid.setdefault(record.uuid, set()).add(host)

    def remove(self, host: str, uuid: str) -> None:
        old = self._hosts.get(host, {}).pop(uuid, None)
        if old is None:
            return
        self._unname(host, old)
        hosts = self._by_uuid.get(uuid)
        if hosts is not None:
            hosts.discard(host)
            if not hosts:
                del self._by_uuid[uuid]

    def _unname(self, host: str, record: DomainRecord) -> None:
        hosts = self._by_name.get(record.name)
        if hosts is not None and hosts.get(host) == record.uuid:
            del hosts[host]
            if not hosts:
                del self._by_name[record.name]

    def count(self, host: str) -> int:
        return len(self._hosts.get(host, {}))

    def named(self, name: str) -> list[tuple[str, DomainRecord]]:
        """Every ``(host, record)`` called ``name``, hosts in name order."""
        return [
            (host, self._hosts[host][uuid])
            for host, uuid in sorted(self._by_name.get(name, {}).items())
        ]

    def copies(self, uuid: str) -> list[tuple[str, DomainRecord]]:
        """Every ``(host, record)`` of ``uuid``, hosts in name order."""
        return [(host, self._hosts[host][uuid]) for host in sorted(self._by_uuid.get(uuid, ()))]

    def all(self) -> list[tuple[str, DomainRecord]]:
        return [
            (host, record) for host, records in self._hosts.items() for record in records.values()
        ]
