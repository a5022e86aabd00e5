"""Pre-action hooks: the admin's executables that run before a tenant's action and may refuse it.

The executables in ``hooks_dir/pre-start.d`` (and ``pre-reboot.d``, ``pre-shutdown.d``,
``pre-poweroff.d``, ``pre-reset.d``, ``pre-console.d``, the last for ``console`` and ``watch``
alike) run before that action, in name order, one after the other, only once the request has
been authorized: a hook never hears of a domain the tenant may not act on. Which files run,
and how each runs (argv, environment, stdin, timeout, process group), is exactly as for the
event hooks (``hooks``: ``HookDirectory``, ``run_executable``); the event is ``pre-ACTION``
and the JSON and environment also name the action.

A hook allows with exit status 0. Any other status refuses: the first line of its standard
output, printable characters only and at most ``MESSAGE_MAX_CHARS``, is the tenant's message,
the action does not happen, later hooks do not run, and the audit line names the hook. A hook
that does not decide also stops the action (fail closed): one killed by a signal, one that
could not be started, a directory that fails the trusted-file rule, and one that times out
unless ``pre_hook_on_timeout = "allow"``. Those are ``temporary`` for the tenant (exit 75, try
again), a refusal is ``denied`` (exit 77). A file skipped for its name, owner, mode or kind is
skipped with a warning, as the event hooks skip it.

Hooks run as subprocesses on the event loop, never blocking it; at most
``pre_hook_runs_at_once`` actions are in their hooks at once, at most
``pre_hook_runs_per_user`` of one user, so one tenant's requests cannot hold every slot. A
request waits for its slots at most ``pre_hook_timeout_seconds`` and is then refused as
busy, whatever ``pre_hook_on_timeout`` says (or a tenant could flood the slots to get past
the hooks). Nothing a tenant sent is on a hook's command line. See vpsshelld(8), "HOOKS".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vpsshell.checks import helper_trusted_uids
from vpsshell.daemon.events import Event, utc_now
from vpsshell.daemon.hooks import HookDirectory, HookRun, hook_environment, run_executable
from vpsshell.daemon.operation import Request, Target
from vpsshell.errors import Denied, TemporaryFailure

log = logging.getLogger("vpsshell.hooks")

# the policy action -> the directory of its hooks; actions not named here have none
PRE_HOOK_DIRECTORIES = {
    "start": "pre-start.d",
    "reboot": "pre-reboot.d",
    "shutdown": "pre-shutdown.d",
    "poweroff": "pre-poweroff.d",
    "reset": "pre-reset.d",
    "console": "pre-console.d",
    "watch": "pre-console.d",
}
MESSAGE_MAX_CHARS = 200


def tenant_message(stdout: bytes) -> str:
    """The first line of a hook's output as a tenant may see it: printable characters only
    (no escape sequences, no bidirectional overrides), at most ``MESSAGE_MAX_CHARS``."""
    line = stdout.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return "".join(ch for ch in line if ch.isprintable()).strip()[:MESSAGE_MAX_CHARS]


@dataclass
class _UserSlots:
    """One user's share of the slots, kept while any of their requests holds or wants one."""

    semaphore: asyncio.Semaphore
    requests: int = 0


class PreActionHooks:
    def __init__(
        self,
        hooks_dir: str,
        *,
        timeout: float,
        on_timeout: str = "refuse",
        at_once: int = 8,
        per_user: int = 2,
        trusted_uids: frozenset[int] | None = None,
    ) -> None:
        trusted = helper_trusted_uids() if trusted_uids is None else trusted_uids
        self.timeout = timeout
        self.allow_on_timeout = on_timeout == "allow"
        # hooks_dir holds the pre-ACTION.d directories: whoever may write it may swap them
        self._parent = HookDirectory(hooks_dir, trusted, ignored=lambda name: True)
        self._directories = {
            name: HookDirectory(os.path.join(hooks_dir, name), trusted)
            for name in set(PRE_HOOK_DIRECTORIES.values())
        }
        self._slots = asyncio.Semaphore(at_once)
        self.per_user = per_user
        self._users: dict[int, _UserSlots] = {}

    async def check(self, request: Request, action: str, target: Target) -> bool:
        """Run the pre-action hooks of ``action`` on ``target`` for ``request``; returns whether
        any ran. Raises ``Denied`` when a hook refuses, ``TemporaryFailure`` when one did not
        decide or no slot came free in time. Each hook's outcome goes into the audit line."""
        directory_name = PRE_HOOK_DIRECTORIES.get(action)
        if directory_name is None:
            return False
        subject = f"{action} {target.info.name}"
        paths = self._directories[directory_name].scan()
        if paths == []:
            return False
        if paths is None or self._parent.scan() is None:
            request.audit["pre_hooks"] = [{"hook": directory_name, "outcome": "untrusted"}]
            raise TemporaryFailure(f"{subject}: your provider's checks cannot run; try later")
        async with self._slot(request.caller.uid, subject):
            await self._run_all(request, action, target, directory_name, paths)
        return True

    async def _run_all(
        self, request: Request, action: str, target: Target, directory_name: str, paths: list[str]
    ) -> None:
        info = target.info
        event = Event(
            0,
            utc_now(),
            f"pre-{directory_name[4:-2]}",
            info.name,
            info.uuid,
            "",
            request.caller.user,
            info.host,
        )
        # seq: a pre-action is not a recorded event; action: console and watch share a directory
        stdin_json = {**event.to_json(), "seq": None, "action": action}
        stdin = (json.dumps(stdin_json, ensure_ascii=True, sort_keys=True) + "\n").encode()
        env = {**hook_environment(event), "VPSSHELL_ACTION": action}
        outcomes: list[dict[str, Any]] = []
        request.audit["pre_hooks"] = outcomes
        subject = f"{action} {info.name}"
        for path in paths:
            ran = await run_executable(
                path, stdin, env, self.timeout, what=f"{subject} by {request.caller.user}"
            )
            record = {"hook": f"{directory_name}/{ran.name}", **_outcome(ran)}
            outcomes.append(record)
            if record["outcome"] == "allowed":
                continue
            if record["outcome"] == "timed-out" and self.allow_on_timeout:
                record["outcome"] = "timed-out-allowed"
                log.warning("hooks: %s timed out; allowed (pre_hook_on_timeout)", record["hook"])
                continue
            log.warning(
                "hooks: %s stopped %s by %s: %s",
                record["hook"],
                subject,
                request.caller.user,
                record["outcome"],
            )
            raise _tenant_error(subject, record["outcome"], ran)

    @contextlib.asynccontextmanager
    async def _slot(self, uid: int, subject: str) -> AsyncIterator[None]:
        """One of the ``at_once`` slots and one of the user's own, waited for at most the
        hook timeout (then ``TemporaryFailure``, busy), held while the hooks run."""
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = _UserSlots(asyncio.Semaphore(self.per_user))
        user.requests += 1
        held: list[asyncio.Semaphore] = []
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await user.semaphore.acquire()
                    held.append(user.semaphore)
                    await self._slots.acquire()
                    held.append(self._slots)
            except TimeoutError:
                raise TemporaryFailure(f"{subject}: too busy to check now; try later") from None
            yield
        finally:
            for semaphore in held:
                semaphore.release()
            user.requests -= 1
            if user.requests == 0:
                del self._users[uid]


def _outcome(ran: HookRun) -> dict[str, Any]:
    """How one run decided, for the audit line."""
    if ran.start_error is not None:
        return {"outcome": "not-started", "error": ran.start_error}
    if ran.timed_out or ran.status is None:
        return {"outcome": "timed-out"}
    if ran.status < 0:
        return {"outcome": "crashed", "signal": -ran.status}
    if ran.status > 0:
        return {"outcome": "refused", "status": ran.status, "message": tenant_message(ran.stdout)}
    return {"outcome": "allowed"}


def _tenant_error(subject: str, outcome: str, ran: HookRun) -> Denied | TemporaryFailure:
    """What the tenant is told: the hook's own words for a refusal, never the hook's name."""
    if outcome == "refused":
        message = tenant_message(ran.stdout)
        return Denied(f"{subject} refused: {message}" if message else f"{subject} refused")
    if outcome == "timed-out":
        return TemporaryFailure(f"{subject}: your provider's check did not answer; try later")
    return TemporaryFailure(f"{subject}: your provider's check failed; try again later")
