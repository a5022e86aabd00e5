"""The helper's current policy: loaded from the policy directory, reloaded on change.

A policy that fails to load is still installed: it denies everything (see design.md), and each
error is logged with ``file:line``. Reloads happen on SIGHUP, on an admin ``reload`` request and
when the directory's fingerprint changes (polled; cheap ``stat`` calls only).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from vpsshell.policy import Policy, dir_fingerprint, load_policy_dir

log = logging.getLogger("vpsshell.policy")


class PolicyState:
    def __init__(self, policy_dir: str, on_reload: Callable[[Policy], None] | None = None) -> None:
        self.policy_dir = policy_dir
        self.trusted_uids = frozenset({0, os.geteuid()})
        self.policy: Policy = Policy.from_texts({})
        self._fingerprint: object = None
        self.on_reload = on_reload

    def reload(self) -> Policy:
        self._fingerprint = dir_fingerprint(self.policy_dir)
        policy = load_policy_dir(self.policy_dir, trusted_uids=self.trusted_uids)
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
                    self.reload()
            except Exception:  # never let the watcher die
                log.exception("policy watcher failed; will retry")
