"""Admin hooks: every executable in ``hooks_dir`` runs once per event, one at a time, in order.

The request path never waits for a hook: events wait in bounded queues that one worker task
drains, running the hooks of each event in name order. Events a tenant's request causes
(``console-*``, ``denied``) are kept apart from the others (the backend's lifecycle events,
``policy-reloaded``): those run first and never make room for a tenant's events, and a
tenant's events are bounded per user, so one tenant provoking events (a loop of
``console --takeover``, of refusals) can neither push out a ``crashed`` of another tenant's
domain nor the events of another user. Within each queue the domains (lifecycle) or users
(the rest) take turns, each one's events in the order they happened, and when it is full the
oldest event of the one with the most waiting makes room; anything dropped is counted and
logged (the audit log is not affected). Kinds not named as a tenant's
are lifecycle events here, so a kind added later is never tenant noise by mistake.

A hook is trusted code run as root, so only files that only root could have put there run: the
directory and each file must pass the one trusted-file rule (``vpsshell.checks``: owned by root,
or by the helper's own user for an unprivileged helper, not group- or world-writable, a regular
file and no symbolic link), and files must be executable, named like ``run-parts`` names (no
hidden files, editor backups or package manager leftovers). Anything skipped is logged once,
with why. A hook gets no tenant string on its command line (argv is its absolute path), no
shell, a fixed environment, the event as JSON on stdin, ``/`` as working directory and a
session of its own, whose whole process group is killed at the timeout. See vpsshelld(8), "HOOKS".

The pre-action hooks (``pre_hooks``) live in ``pre-ACTION.d`` directories inside ``hooks_dir``
and follow the same rules: they use ``HookDirectory`` and ``run_executable`` from here, and
the event hooks pass their directories by.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from vpsshell.checks import helper_trusted_uids, trusted_file_problem
from vpsshell.daemon.events import CONSOLE_KINDS, Event

log = logging.getLogger("vpsshell.hooks")

HOOK_NAME_RE = re.compile(r"[0-9A-Za-z_][0-9A-Za-z_.-]*\Z")
# run-parts' and package managers' leftovers: never run, even when they are executable
SKIPPED_SUFFIXES = re.compile(r".*(\.dpkg-[a-z]+|\.rpm[a-z]*|\.ucf-[a-z]+|\.bak|\.orig|~)\Z")
HOOK_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_BYTES = 4096  # of each of stdout and stderr, into the helper's log
OUTPUT_DRAIN_SECONDS = 1.0  # after the hook ended: a child that kept its pipes is not waited for
STOP_GRACE_SECONDS = 2.0
# events a tenant's request causes, queued per user; every other kind is a lifecycle event here
TENANT_CAUSED_KINDS = CONSOLE_KINDS | frozenset({"denied"})
PRE_ACTION_DIRECTORY_RE = re.compile(r"pre-[a-z]+\.d\Z")


def _inert(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def hook_environment(event: Event) -> dict[str, str]:
    """Exactly the hook's environment: nothing of the helper's own leaks in."""
    return {
        "PATH": HOOK_PATH,
        "LANG": "C.UTF-8",
        "VPSSHELL_EVENT": event.kind,
        "VPSSHELL_DOMAIN": event.domain or "",
        "VPSSHELL_USER": event.user or "",
        "VPSSHELL_UUID": event.uuid or "",
        "VPSSHELL_HOST": event.host or "",
    }


def directory_problem(directory: str, trusted_uids: frozenset[int]) -> str | None:
    """Why no hook in ``directory`` may run, or None."""
    try:
        info = os.stat(directory)  # named by root's config: it may be reached through a link
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return exc.strerror or str(exc)
    problem = trusted_file_problem(info, trusted_uids, directory=True)
    return f"is {problem}" if problem else None


def skip_reason(name: str, info: os.stat_result, trusted_uids: frozenset[int]) -> str | None:
    """Why the file ``name`` (``lstat`` result ``info``) in the hooks directory must not run."""
    if not HOOK_NAME_RE.match(name):
        return "name is not [0-9A-Za-z_][0-9A-Za-z_.-]* (hidden or odd file)"
    if SKIPPED_SUFFIXES.match(name):
        return "backup or package manager file"
    problem = trusted_file_problem(info, trusted_uids)
    if problem:
        return problem
    if not info.st_mode & 0o111:
        return "not executable"
    return None


class FairQueue:
    """Events waiting, grouped by a key (a domain, a user). The keys take turns, each key's
    events in the order they happened, so one key's backlog never delays another's events by
    more than one event each. At most ``limit`` wait in all and ``per_key`` of one key: past
    that, the oldest event of the key with the most waiting (counting the new one; the new
    one's key on a tie) is dropped, so a key flooding the queue only ever loses its own."""

    def __init__(self, limit: int, per_key: int | None = None) -> None:
        self.limit = limit
        self.per_key = per_key
        self._by_key: dict[str, deque[Event]] = {}  # in turn order: the next to run first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, key: str, event: Event) -> Event | None:
        """Queue ``event``; returns the event dropped to make room, if one was."""
        queue = self._by_key.setdefault(key, deque())
        queue.append(event)
        self._size += 1
        if self.per_key is not None and len(queue) > self.per_key:
            return self._drop_oldest(key)
        if self._size > self.limit:
            fullest = max(self._by_key, key=lambda k: (len(self._by_key[k]), k == key))
            return self._drop_oldest(fullest)
        return None

    def pop(self) -> Event | None:
        """The oldest event of the key whose turn it is (then it waits for the others'), or
        None."""
        if not self._by_key:
            return None
        key = next(iter(self._by_key))
        event = self._drop_oldest(key)
        if key in self._by_key:
            self._by_key[key] = self._by_key.pop(key)  # to the end of the turns
        return event

    def _drop_oldest(self, key: str) -> Event:
        queue = self._by_key[key]
        event = queue.popleft()
        self._size -= 1
        if not queue:
            del self._by_key[key]
        return event


class HookDirectory:
    """One directory of hooks: which of its files may run now, each skipped file (and a
    refused directory) logged once with why, again if the reason changes."""

    def __init__(
        self,
        directory: str,
        trusted_uids: frozenset[int],
        ignored: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.directory = directory
        self.trusted_uids = trusted_uids
        self.ignored = ignored  # names that are not hooks and pass without a word
        self._reported: dict[str, str] = {}  # file (or "" for the directory) -> logged reason

    def _report(self, key: str, message: str) -> None:
        """Log ``message`` about ``key`` (a file name, "" for the directory) unless already."""
        if self._reported.get(key) != message:
            self._reported[key] = message
            log.warning("hooks: %s", message)

    def scan(self) -> list[str] | None:
        """Absolute paths of the hooks to run now, in name order ([] when the directory does
        not exist), or None when the directory itself is refused; logs what it skips, once."""
        problem = directory_problem(self.directory, self.trusted_uids)
        if problem == "does not exist":
            return []
        if problem:
            self._report("", f"{self.directory}: {problem}; no hook runs")
            return None
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            self._report("", f"{self.directory}: {exc.strerror}; no hook runs")
            return None
        self._reported.pop("", None)
        paths = []
        for name in names:
            if self.ignored(name):
                continue
            path = os.path.join(self.directory, name)
            try:
                reason = skip_reason(name, os.lstat(path), self.trusted_uids)
            except OSError:
                continue  # removed meanwhile
            if reason:
                self._report(name, f"{_inert(os.fsencode(path))}: {reason}; skipped")
            else:
                self._reported.pop(name, None)
                paths.append(path)
        for name in set(self._reported) - set(names) - {""}:
            del self._reported[name]  # gone: if it comes back broken, say so again
        return paths


def is_pre_action_directory(name: str) -> bool:
    """``pre-start.d`` and the like, the pre-action hooks' directories (``pre_hooks``): in
    ``hooks_dir`` but not event hooks, so the event hooks pass them without a word."""
    return PRE_ACTION_DIRECTORY_RE.match(name) is not None


class HookRunner:
    def __init__(
        self,
        directory: str,
        *,
        timeout: float,
        queue_limit: int,
        tenant_queue_limit: int = 1000,
        tenant_queue_per_user: int = 100,
        trusted_uids: frozenset[int] | None = None,
    ) -> None:
        self.directory = directory
        self.timeout = timeout
        self.trusted_uids = helper_trusted_uids() if trusted_uids is None else trusted_uids
        self._directory = HookDirectory(directory, self.trusted_uids, is_pre_action_directory)
        # lifecycle events (the backend's, policy-reloaded) per domain, run first; the events
        # tenants' requests cause per user, bounded per user (see the module docstring)
        self._lifecycle = FairQueue(queue_limit)
        self._tenant_caused = FairQueue(tenant_queue_limit, per_key=tenant_queue_per_user)
        self.dropped_lifecycle = 0
        self.dropped_tenant_caused = 0
        self._ready = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._running: asyncio.subprocess.Process | None = None
        self._stopping = False

    def hooks(self) -> list[str]:
        """Absolute paths of the hooks to run now, in name order; logs what it skips, once."""
        return self._directory.scan() or []

    # -- the queue ------------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Events dropped for the hooks so far, of both queues."""
        return self.dropped_lifecycle + self.dropped_tenant_caused

    def pending(self) -> int:
        return len(self._lifecycle) + len(self._tenant_caused)

    def submit(self, event: Event) -> None:
        """Queue ``event`` for the hooks; never waits (an event listener)."""
        if self._stopping:
            return
        if event.kind in TENANT_CAUSED_KINDS:
            dropped = self._tenant_caused.put(event.user or "", event)
            if dropped is not None:
                self.dropped_tenant_caused += 1
                self._log_drop(dropped, self.dropped_tenant_caused, "tenants' events")
        else:
            dropped = self._lifecycle.put(event.uuid or event.domain or event.host or "", event)
            if dropped is not None:
                self.dropped_lifecycle += 1
                self._log_drop(dropped, self.dropped_lifecycle, "lifecycle events")
        self._ready.set()

    def _log_drop(self, event: Event, count: int, queue: str) -> None:
        if count == 1 or count % 100 == 0:  # a flood is said, not logged line by line
            log.warning(
                "hooks: queue of %s full; %s %s%s dropped for hooks (%d so far)",
                queue,
                event.kind,
                event.domain or "-",
                f" by {event.user}" if event.user else "",
                count,
            )

    def _next(self) -> Event | None:
        return self._lifecycle.pop() or self._tenant_caused.pop()

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="hooks")

    async def _work(self) -> None:
        while True:
            event = self._next()
            if event is None:
                self._ready.clear()
                await self._ready.wait()
                continue
            try:
                for path in self.hooks():
                    await self.run_hook(path, event)
            except Exception:
                log.exception("hooks: running the hooks of %s failed", event)

    async def stop(self) -> None:
        """Helper shutdown: let a running hook finish briefly, then kill it; drop the rest."""
        self._stopping = True
        if self._worker is None:
            return
        process = self._running
        if process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE_SECONDS)
            _kill_group(process)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self.pending():
            log.warning("hooks: stopping; %d queued event(s) not run", self.pending())

    # -- one hook -------------------------------------------------------------------------------

    async def run_hook(self, path: str, event: Event) -> int | None:
        """Run one hook for one event; returns its exit status (None if it timed out or could
        not be started, negative for the signal that killed it)."""
        stdin = (json.dumps(event.to_json(), ensure_ascii=True, sort_keys=True) + "\n").encode()

        def running(process: asyncio.subprocess.Process | None) -> None:
            self._running = process

        ran = await run_executable(
            path,
            stdin,
            hook_environment(event),
            self.timeout,
            what=f"{event.kind} {event.domain or '-'}",
            on_process=running,
        )
        if ran.status:
            log.warning("hooks: %s exited with status %d on %s", ran.name, ran.status, event.kind)
        return ran.status


class HookRun(NamedTuple):
    """How one run of a hook ended."""

    name: str  # the file's name
    status: int | None  # its exit status, negative for a signal; None: timed out, not started
    timed_out: bool
    stdout: bytes  # the first OUTPUT_BYTES
    start_error: str | None  # why it could not be started


async def run_executable(
    path: str,
    stdin: bytes,
    env: dict[str, str],
    timeout: float,
    *,
    what: str,
    on_process: Callable[[asyncio.subprocess.Process | None], None] | None = None,
) -> HookRun:
    """Run the hook ``path`` once as the module docstring says: argv only its path, exactly
    ``env``, ``stdin`` on its standard input, in a session of its own whose process group is
    killed at ``timeout`` (and when it exits, and when the caller is cancelled). Its output
    goes to the helper's log, inert and bounded; ``what`` names the occasion in the log.
    ``on_process`` is told the process while it runs, then None."""
    name = os.path.basename(path)
    try:
        process = await asyncio.create_subprocess_exec(
            path,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.error("hooks: %s could not be started: %s", name, reason)
        return HookRun(name, None, False, b"", reason)
    if on_process is not None:
        on_process(process)
    readers = [
        asyncio.create_task(_read_bounded(stream)) for stream in (process.stdout, process.stderr)
    ]
    timed_out = False
    try:
        await _feed(process, stdin)
        try:
            status: int | None = await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            _kill_group(process)
            await process.wait()
            status, timed_out = None, True
            log.error("hooks: %s timed out after %g s on %s; killed", name, timeout, what)
        _kill_group(process)  # whatever it left behind in its group
        done, pending = await asyncio.wait(readers, timeout=OUTPUT_DRAIN_SECONDS)
        for task in pending:
            task.cancel()
        outputs = [task.result() if task in done else b"" for task in readers]
    finally:
        if process.returncode is None:  # the caller was cancelled: leave nothing running
            _kill_group(process)
        if on_process is not None:
            on_process(None)
        for task in readers:
            task.cancel()
    for label, data in zip(("stdout", "stderr"), outputs, strict=True):
        if data:
            log.info("hooks: %s %s: %s", name, label, _inert(data.rstrip(b"\n")))
    return HookRun(name, status, timed_out, outputs[0], None)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    assert process.stdin is not None
    try:
        process.stdin.write(data)
        await asyncio.wait_for(process.stdin.drain(), 5.0)
    except (ConnectionError, TimeoutError):
        pass  # a hook need not read its stdin
    finally:
        process.stdin.close()


async def _read_bounded(stream: asyncio.StreamReader | None) -> bytes:
    """The first ``OUTPUT_BYTES`` of ``stream``; the rest is read and discarded, so a chatty
    hook never blocks on a full pipe."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < OUTPUT_BYTES:
            kept += chunk[: OUTPUT_BYTES - len(kept)]
    return bytes(kept)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
