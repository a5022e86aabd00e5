"""PAM account checks of tenants, run so that no tenant can make another one wait.

Every new tenant connection and every long-lived session is checked with PAM account
management (expired accounts, pam_access, pam_time, pam_nologin...). The checks block, so they
run on a thread pool of their own, never asyncio's default pool (password checks have another
one, see ``confirm``). Per uid at most one check is in flight: any number of connections of one
user wait for that one check rather than occupying the pool, so a user who opens hundreds of
connections at once costs one thread at a time (connections arriving while a check runs share
its verdict). Long sessions reuse a verdict up to ``max_age`` seconds old. A check that fails or
hangs refuses the account (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("vpsshell.accounts")

CHECK_TIMEOUT_SECONDS = 30.0
FAILED_CHECK = "the account check failed"


class AccountChecker:
    def __init__(self, service: str, *, threads: int) -> None:
        self.service = service  # "" turns PAM off: every account is accepted
        self._executor: ThreadPoolExecutor | None = None
        self._threads = threads
        self._in_flight: dict[int, asyncio.Task[str | None]] = {}
        self._verdicts: dict[int, tuple[float, str | None]] = {}

    async def refusal(self, uid: int, user: str, max_age: float = 0.0) -> str | None:
        """None if PAM accepts ``user``'s account, else why not. A verdict younger than
        ``max_age`` is reused; a check under way is always joined."""
        if not self.service:
            return None
        known = self._verdicts.get(uid)
        if known is not None and time.monotonic() - known[0] < max_age:
            return known[1]
        task = self._in_flight.get(uid)
        if task is None:
            task = asyncio.create_task(self._check(uid, user), name=f"pam-account-{uid}")
            self._in_flight[uid] = task
        # shielded: one caller going away must not cancel the check the others wait for
        return await asyncio.shield(task)

    def last_refusal(self, uid: int) -> str | None:
        """The latest verdict for ``uid`` without checking again (None if accepted or unknown)."""
        known = self._verdicts.get(uid)
        return known[1] if known is not None else None

    async def _check(self, uid: int, user: str) -> str | None:
        from vpsshell.daemon.pam_service import account_refusal

        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="pam-account")
        loop = asyncio.get_running_loop()
        try:
            verdict = await asyncio.wait_for(
                loop.run_in_executor(self._executor, account_refusal, user, self.service),
                CHECK_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # PAM missing, broken or hung: fail closed
            log.error("PAM account check for %s failed: %r", user, exc)
            verdict = FAILED_CHECK
        finally:
            self._in_flight.pop(uid, None)
        self._verdicts[uid] = (time.monotonic(), verdict)
        return verdict

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
