"""The backend contract: what the helper relies on from every backend, checked the same way on each.

Domains are listed with their facts and host label; lookup is by exact name and never matches a
numeric id, a UUID or a name the backend must not offer; actions in the wrong state fail with
the same messages everywhere; power actions end in the expected state with the expected
lifecycle events, delivered on the asyncio loop's thread; unknown UUIDs are refused like unknown
names; a console carries bytes both ways.

A backend is described by a ``Profile``: its config table, the domains it holds and their facts,
how long its guests take, how often to poll it, and how to talk to a guest's console (which is
also how the checks wait for a guest to be up before asking it to shut down or reboot). Every
wait is a condition with a deadline from the profile, never a fixed sleep. A backend added later
gets every check by writing a profile.

This module does not import pytest: it runs under pytest (tests/unit/test_backend_contract.py:
sim and libvirt's test driver; tests/e2e/test_qemu_guest.py: libvirt with a real QEMU guest)
and on its own inside the Xen lab's dom0 (tests/xen/lab_contract.py). It only ever acts on the
profile's domains, and leaves them shut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from vpsshell.backends import create_backend
from vpsshell.backends.base import Backend, DomainState, LifecycleEvent
from vpsshell.errors import ActionFailed, Denied

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
INFO_KEYS = {"name", "uuid", "state", "vcpus", "memory_mib", "uptime_seconds", "host"}
DENIED = "no such domain or permission denied"


class NotApplicable(Exception):
    """The backend lacks what a check needs (its profile says so): reported as skipped."""


@dataclass(frozen=True)
class Domain:
    """A domain the profile's backend holds, shut off, with the facts it must report."""

    name: str
    vcpus: int
    memory_mib: int
    host: str
    uuid: str | None = None  # the UUID it must have, when the configuration fixes one


@dataclass(frozen=True)
class Console:
    """How a guest's serial console answers. ``wake`` is sent every ``wake_every`` seconds
    until ``prompt`` shows (the guest is up); ``login`` steps (send, expect) lead from there
    to a shell, where ``command`` prints ``answer``."""

    wake: bytes
    prompt: bytes
    command: bytes
    answer: bytes
    login: tuple[tuple[bytes, bytes], ...] = ()
    wake_every: float = 1.0
    ends_with_domain: bool = False  # the stream ends by itself when the domain is powered off


@dataclass(frozen=True)
class Profile:
    """One backend as the contract sees it. The checks act on ``domains[0]``; ``domains[1]``
    is the other one (on another host, where the backend has several)."""

    name: str
    table: dict[str, Any]  # the daemon config's [backend] table
    domains: tuple[Domain, ...]
    boot_seconds: float  # from start (or a reboot) to running, and to a guest that answers
    poll_seconds: float  # how often to ask the backend while waiting
    console: Console | None = None  # None: the backend has no consoles
    hidden: tuple[str, ...] = ()  # names the hypervisor has that must never be offered
    numeric_id: Callable[[str], Awaitable[str | None]] | None = None  # a running domain's id
    reports_reboots: bool = True  # reboots and resets come as events (not libvirt's test driver)
    check_seconds: float = 300.0


@dataclass
class Subject:
    """An opened backend, what it emitted and on which threads, and its profile."""

    backend: Backend
    profile: Profile
    events: list[LifecycleEvent] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    @property
    def main(self) -> Domain:
        return self.profile.domains[0]

    @property
    def other(self) -> Domain:
        return self.profile.domains[1]

    async def uuid(self, name: str) -> str:
        info = await self.backend.lookup(name)
        assert info is not None, f"lookup({name!r}) found nothing"
        return info.uuid

    async def state(self, name: str) -> DomainState:
        return (await self.backend.info(await self.uuid(name))).state

    async def until(self, condition: Callable[[], Awaitable[bool]]) -> bool:
        """Poll ``condition`` every ``poll_seconds`` until it holds (True) or ``boot_seconds``
        have passed (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.profile.boot_seconds
        while not await condition():
            if loop.time() > deadline:
                return False
            await asyncio.sleep(self.profile.poll_seconds)
        return True

    async def wait_state(self, name: str, state: DomainState) -> None:
        async def reached() -> bool:
            return await self.state(name) is state

        if not await self.until(reached):
            now = (await self.state(name)).value
            raise AssertionError(f"{name} is {now}, not {state.value} after {self.waited}")

    def has_event(self, kind: str, name: str, detail: str | None = None) -> bool:
        return any(
            e.kind == kind and e.name == name and (detail is None or e.detail == detail)
            for e in self.events
        )

    async def wait_event(self, kind: str, name: str, detail: str | None = None) -> None:
        async def seen() -> bool:
            return self.has_event(kind, name, detail)

        if not await self.until(seen):
            raise AssertionError(f"no {kind}/{detail} event for {name} after {self.waited}")

    @property
    def waited(self) -> str:
        return f"{self.profile.boot_seconds:g} s; events: {self.events}"

    async def running(self, name: str) -> str:
        """Start ``name`` and wait until it runs; its UUID."""
        uuid = await self.uuid(name)
        await self.backend.start(uuid)
        await self.wait_state(name, DomainState.RUNNING)
        return uuid

    async def guest_up(self, uuid: str) -> None:
        """Wait until the guest answers on its console (so it acts on a shutdown or reboot
        request); right away on a backend without consoles, whose guests need no boot."""
        if self.profile.console is None:
            return
        console = await GuestConsole.open(self, uuid)
        try:
            await console.expect(self.profile.console.prompt, wake=self.profile.console.wake)
        finally:
            await console.close()

    async def ensure_off(self) -> None:
        for domain in self.profile.domains:
            if await self.state(domain.name) is not DomainState.SHUTOFF:
                await self.backend.poweroff(await self.uuid(domain.name))
            await self.wait_state(domain.name, DomainState.SHUTOFF)


class GuestConsole:
    """A console stream read by a task of its own (so a wait can time out without losing
    output), with what it said so far."""

    def __init__(self, subject: Subject, stream: Any) -> None:
        self.subject = subject
        self.stream = stream
        self.seen = b""
        self.ended = asyncio.Event()
        self._more = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, subject: Subject, uuid: str) -> GuestConsole:
        return cls(subject, await subject.backend.open_console(uuid))

    async def _read(self) -> None:
        try:
            while data := await self.stream.read():
                self.seen += data
                self._more.set()
        finally:
            self.ended.set()
            self._more.set()

    async def expect(
        self, pattern: bytes, wake: bytes | None = None, since: int | None = None
    ) -> None:
        """Wait until the output since ``since`` (default: now) contains ``pattern``; sends
        ``wake`` every ``wake_every`` seconds meanwhile, if given."""
        profile = self.subject.profile
        assert profile.console is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + profile.boot_seconds
        start = len(self.seen) if since is None else since
        while pattern not in self.seen[start:]:
            if self.ended.is_set():
                raise AssertionError(f"the console ended before {pattern!r}: {self.seen[-500:]!r}")
            if loop.time() > deadline:
                raise AssertionError(f"no {pattern!r} on the console: {self.seen[-500:]!r}")
            if wake is not None:
                await self.stream.write(wake)
            self._more.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._more.wait(), profile.console.wake_every)

    async def send(self, data: bytes, expect: bytes) -> None:
        """Type ``data``; wait for ``expect`` in what follows."""
        start = len(self.seen)
        await self.stream.write(data)
        await self.expect(expect, since=start)

    async def close(self) -> None:
        await self.stream.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


Check = Callable[[Subject], Coroutine[Any, Any, None]]
CHECKS: dict[str, Check] = {}


def check(function: Check) -> Check:
    CHECKS[function.__name__] = function
    return function


async def expect_failure(
    action: Callable[[], Awaitable[None]], pattern: str, kind: type[Exception] = ActionFailed
) -> None:
    try:
        await action()
    except kind as exc:
        assert re.search(pattern, str(exc)), f"{exc!r} does not match {pattern!r}"
        return
    raise AssertionError(f"no {kind.__name__} matching {pattern!r}")


@check
async def lists_every_domain_with_its_facts(s: Subject) -> None:
    listed = await s.backend.list_domains()
    expected = {d.name: d for d in s.profile.domains}
    assert sorted(d.name for d in listed) == sorted(expected), listed
    for info in listed:
        domain = expected[info.name]
        assert (info.vcpus, info.memory_mib) == (domain.vcpus, domain.memory_mib), info
        assert (info.state, info.uptime_seconds) == (DomainState.SHUTOFF, None), info
        assert info.host == domain.host, info
        assert UUID_RE.match(info.uuid), info
        assert domain.uuid in (None, info.uuid), info
        assert set(info.to_json()) == INFO_KEYS, info
    assert len({d.uuid for d in listed}) == len(listed), listed
    assert await s.backend.list_domains() == listed  # a stable order


@check
async def lookup_is_exact_and_never_matches_a_numeric_id(s: Subject) -> None:
    listed = {d.name: d for d in await s.backend.list_domains()}
    for name in listed:
        assert await s.backend.lookup(name) == listed[name]
    name = s.main.name
    await s.running(name)  # now it has a numeric id
    misses = ["0", "1", "2", "-1", name.upper(), name[:-1], f"{name} ", "", "nosuch"]
    if s.profile.numeric_id is not None:
        domain_id = await s.profile.numeric_id(name)
        assert domain_id is not None and domain_id.isdigit(), domain_id
        misses.append(domain_id)
    for miss in [*misses, *s.profile.hidden]:
        assert await s.backend.lookup(miss) is None, miss
    found = await s.backend.lookup(listed[name].uuid)
    assert found is None, f"a UUID looked up as a name found {found}"


@check
async def start_runs_the_domain_and_emits_started_on_the_loop_thread(s: Subject) -> None:
    uuid = await s.running(s.main.name)
    await s.wait_event("started", s.main.name)
    [event] = [e for e in s.events if e.kind == "started"]
    assert (event.uuid, event.name) == (uuid, s.main.name)
    info = await s.backend.info(uuid)
    # counted from this start (not a stale or absolute time)
    assert isinstance(info.uptime_seconds, int), info
    assert 0 <= info.uptime_seconds <= s.profile.check_seconds, info
    assert info.host == s.main.host, info
    assert s.threads == {threading.current_thread().name}, s.threads
    assert await s.state(s.other.name) is DomainState.SHUTOFF


@check
async def actions_in_the_wrong_state_fail_with_the_same_messages(s: Subject) -> None:
    name = s.main.name
    uuid = await s.uuid(name)
    b = s.backend
    cases: list[tuple[Callable[[], Awaitable[None]], str]] = [
        (lambda: b.shutdown(uuid), f"{name} is not running (shutoff)"),
        (lambda: b.reboot(uuid), f"{name} is not running (shutoff)"),
        (lambda: b.reset(uuid), f"{name} is not running (shutoff)"),
        (lambda: b.sysrq(uuid, "m"), f"{name} is not running (shutoff)"),
        (lambda: b.poweroff(uuid), f"{name} is already shut off"),
    ]
    for action, message in cases:
        await expect_failure(action, f"^{re.escape(message)}$")
    await s.running(name)
    await expect_failure(lambda: b.start(uuid), f"^{re.escape(name)} is already running$")
    for key in ("", "mm", "M", "!", "é"):
        await expect_failure(lambda k=key: b.sysrq(uuid, k), "not a SysRq key")  # type: ignore[misc]
    assert await s.state(name) is DomainState.RUNNING


@check
async def shutdown_ends_shut_off_with_a_stopped_event(s: Subject) -> None:
    name = s.main.name
    uuid = await s.running(name)
    await s.guest_up(uuid)  # a guest still booting may not act on the request
    await s.backend.shutdown(uuid)
    await s.wait_state(name, DomainState.SHUTOFF)
    await s.wait_event("stopped", name, "shutdown")
    assert (await s.backend.info(uuid)).uptime_seconds is None


@check
async def poweroff_is_immediate_with_a_destroyed_event(s: Subject) -> None:
    name = s.main.name
    uuid = await s.running(name)
    await s.backend.poweroff(uuid)
    assert await s.state(name) is DomainState.SHUTOFF  # when poweroff returns, not later
    await s.wait_event("stopped", name, "destroyed")


@check
async def reboot_leaves_it_running_with_a_rebooted_event(s: Subject) -> None:
    name = s.main.name
    uuid = await s.running(name)
    await s.guest_up(uuid)  # the guest itself reboots: it must be up to hear the request
    await s.backend.reboot(uuid)
    if s.profile.reports_reboots:
        await s.wait_event("rebooted", name, "reboot")
    await s.wait_state(name, DomainState.RUNNING)
    assert await s.uuid(name) == uuid  # the same domain, whatever the hypervisor's id
    assert not [e for e in s.events if e.kind in ("stopped", "crashed")], s.events


@check
async def reset_and_sysrq_leave_it_running(s: Subject) -> None:
    name = s.main.name
    uuid = await s.running(name)
    await s.backend.reset(uuid)
    if s.profile.reports_reboots:
        await s.wait_event("rebooted", name, "reset")
    await s.wait_state(name, DomainState.RUNNING)
    await s.backend.sysrq(uuid, "m")
    assert await s.state(name) is DomainState.RUNNING
    assert await s.uuid(name) == uuid
    assert not [e for e in s.events if e.kind in ("stopped", "crashed")], s.events


@check
async def domains_are_independent(s: Subject) -> None:
    await s.running(s.main.name)
    other = await s.running(s.other.name)
    await s.backend.poweroff(other)
    assert await s.state(s.other.name) is DomainState.SHUTOFF
    assert await s.state(s.main.name) is DomainState.RUNNING
    assert {(e.kind, e.name) for e in s.events} >= {
        ("started", s.main.name),
        ("started", s.other.name),
    }


@check
async def unknown_uuids_are_denied_like_unknown_names(s: Subject) -> None:
    stranger = str(uuidlib.uuid4())
    for action in (s.backend.info, s.backend.start, s.backend.poweroff):
        for uuid in (stranger, "not-a-uuid", "1", "00000000-0000-0000-0000-000000000000"):
            await expect_failure(lambda a=action, u=uuid: a(u), DENIED, Denied)  # type: ignore[misc]


@check
async def console_carries_bytes_both_ways(s: Subject) -> None:
    talk = s.profile.console
    if talk is None:
        raise NotApplicable(f"{s.profile.name} has no consoles")
    uuid = await s.running(s.main.name)
    console = await GuestConsole.open(s, uuid)
    try:
        await console.expect(talk.prompt, wake=talk.wake)
        for send, expect in talk.login:
            await console.send(send, expect)
        await console.send(talk.command, talk.answer)
        if talk.ends_with_domain:
            await s.backend.poweroff(uuid)
            ended = await s.until(_is_set(console.ended))
            assert ended, f"the console stream did not end with the domain: {console.seen[-300:]!r}"
    finally:
        await console.close()
    assert await console.stream.read() == b""  # a closed stream reads as ended


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return event.is_set()

    return condition


async def run_check(profile: Profile, name: str, state_dir: str) -> None:
    """Run check ``name`` on a freshly opened backend of ``profile``, its domains shut off
    before and after. Raises AssertionError (failed) or NotApplicable (skipped)."""
    subject = Subject(create_backend(profile.table, state_dir), profile)

    def sink(event: LifecycleEvent) -> None:
        subject.events.append(event)
        subject.threads.add(threading.current_thread().name)

    subject.backend.subscribe(sink)
    await subject.backend.open()
    try:
        await subject.ensure_off()
        subject.events.clear()
        await asyncio.wait_for(CHECKS[name](subject), profile.check_seconds)
    finally:
        try:
            await subject.ensure_off()
        finally:
            await subject.backend.close()
