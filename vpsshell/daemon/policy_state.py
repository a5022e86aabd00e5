"""The helper's current policy: loaded from the policy directory, reloaded on change.

A policy that fails to load is still installed: it denies everything (see design.md), and each
error is logged with ``file:line``. Reloads happen on SIGHUP, on an admin ``reload`` request and
when the directory's fingerprint changes (polled; cheap ``stat`` calls only). While the helper
serves, a policy is read and parsed on a worker thread (a big one takes seconds) and requests
are decided by the previous policy until the new one is complete; reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from vpsshell.checks import helper_trusted_uids
from vpsshell.policy import Policy, dir_fingerprint, load_policy_dir

log = logging.getLogger("vpsshell.policy")


class PolicyState:
    def __init__(self, policy_dir: str, on_reload: Callable[[Policy], None] | None = None) -> None:
        self.policy_dir = policy_dir
        self.trusted_uids = helper_trusted_uids()
        self.policy: Policy = Policy.from_texts({})
        self._fingerprint: object = None
        self.on_reload = on_reload
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task[Policy]] = set()

    def reload(self) -> Policy:
        """Load and install the policy now, blocking (at start, before anything is served)."""
        self._fingerprint = dir_fingerprint(self.policy_dir)
        return self._install(load_policy_dir(self.policy_dir, trusted_uids=self.trusted_uids))

    async def reload_async(self) -> Policy:
        """Load the policy on a worker thread, then install it; one reload at a time."""
        async with self._reloading:
            self._fingerprint = dir_fingerprint(self.policy_dir)
            policy = await asyncio.to_thread(
                load_policy_dir, self.policy_dir, trusted_uids=self.trusted_uids
            )
            return self._install(policy)

    def reload_soon(self) -> None:
        """Start a reload without waiting for it (SIGHUP)."""
        task = asyncio.get_running_loop().create_task(self.reload_async())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _install(self, policy: Policy) -> Policy:
        self.policy = policy
        if policy.errors:
            for error in policy.errors:
                log.error("policy: %s", error)
            log.error("policy is broken: every request is denied until it is fixed")
        else:
            log.info(
                "policy loaded: %d rule(s) from %d file(s)", len(policy.rules), len(policy.files)
            )
        if self.on_reload is not None:
            self.on_reload(policy)
        return policy

    def changed(self) -> bool:
        return dir_fingerprint(self.policy_dir) != self._fingerprint

    async def watch(self, interval: float) -> None:
        """Reload whenever the directory changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                if self.changed():
                    log.info("policy directory changed; reloading")
                    await self.reload_async()
            except Exception:  # never let the watcher die
                log.exception("policy watcher failed; will retry")
