"""``confirm=password``: checking a tenant's password with PAM, with a lockout that holds.

An attempt is counted *before* PAM is asked, and per uid only one password check runs at a
time (a second one meanwhile is refused at once, uncounted and without calling PAM), so a
tenant firing guesses over many parallel connections gets exactly ``attempts`` checks per
lockout window, no more. Checks run on a small thread pool of their own: one user's guesses
(each may take seconds, pam_faildelay) never delay anybody's account check or request. The pool
has a bounded queue; beyond it a check is refused as busy. Passwords are never logged or kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("vpsshell.confirm")

CHECK_TIMEOUT_SECONDS = 30.0


class Outcome(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # wrong password (or PAM refused the account); counted
    LOCKED = "locked"  # in a lockout window, now or after this attempt
    BUSY = "busy"  # this user's previous check is still running, or the pool is full


@dataclass
class _Attempts:
    failures: int = 0
    locked_until: float = 0.0


class PasswordChecker:
    def __init__(
        self, service: str, *, attempts: int, lockout_seconds: float, threads: int, queue: int
    ) -> None:
        self.service = service
        self.attempts = attempts
        self.lockout_seconds = lockout_seconds
        self.queue = queue
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._state: dict[int, _Attempts] = {}
        self._checking: set[int] = set()

    def locked_for(self, uid: int) -> float:
        """Seconds left in ``uid``'s lockout, 0 if none."""
        state = self._state.get(uid)
        if state is None:
            return 0.0
        return max(0.0, state.locked_until - time.monotonic())

    async def check(self, uid: int, user: str, password: str) -> tuple[Outcome, str]:
        """Check ``password``; returns the outcome and PAM's reason (for the audit log)."""
        if self.locked_for(uid) > 0:
            return Outcome.LOCKED, "password lockout"
        if uid in self._checking:
            return Outcome.BUSY, "a password check of this user is under way"
        if len(self._checking) >= self.queue:
            return Outcome.BUSY, "too many password checks under way"
        state = self._state.setdefault(uid, _Attempts())
        # counted before PAM is asked, taken back only if the password is right
        state.failures += 1
        refusal = await self._ask_pam(uid, user, password)
        if refusal is None:
            self._state.pop(uid, None)
            return Outcome.ACCEPTED, ""
        if state.failures >= self.attempts:
            state.failures = 0
            state.locked_until = time.monotonic() + self.lockout_seconds
            return Outcome.LOCKED, f"password not accepted: {refusal}; locked out"
        return Outcome.REFUSED, f"password not accepted: {refusal}"

    async def _ask_pam(self, uid: int, user: str, password: str) -> str | None:
        from vpsshell.daemon.pam_service import password_refusal

        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._threads, thread_name_prefix="pam-password")
        loop = asyncio.get_running_loop()
        # the uid stays "checking" until PAM has answered, even if the request that asked is
        # cancelled meanwhile (its client left): never two checks of one user at once
        self._checking.add(uid)
        pending = loop.run_in_executor(
            self._executor, password_refusal, user, password, self.service
        )
        pending.add_done_callback(lambda _: self._checking.discard(uid))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), CHECK_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PAM missing, broken or hung: the password is not accepted
            log.error("PAM password check for %s failed: %r", user, exc)
            return "the password check failed"

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
