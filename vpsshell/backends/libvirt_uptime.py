"""When each running libvirt domain's current boot began, as the helper saw it.

libvirt reports no uptime (``virDomainGetTime`` needs a guest agent and gives the guest's
clock, not its boot; CPU time is not wall time). So the helper keeps the wall-clock time of the
"started" and "rebooted" events itself, keyed by host, UUID and libvirt's domain id (which
changes on every start, so a stale record is recognized), in ``STATE_DIR/libvirt-uptime.json``
to survive helper restarts. A domain first seen already running counts from that moment:
its uptime is then a lower bound. The file is advisory: a damaged one is logged and ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vpsshell.libvirt")

FILE_NAME = "libvirt-uptime.json"
FILE_VERSION = 1


class UptimeBook:
    def __init__(self, state_dir: str, clock: Callable[[], float]) -> None:
        self.path = os.path.join(state_dir, FILE_NAME)
        self.state_dir = state_dir
        self.clock = clock
        self._since: dict[str, tuple[int, float]] = {}  # key -> (domain id, boot began)

    @staticmethod
    def key(host: str, uuid: str) -> str:
        return f"{host}/{uuid}"

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                document = json.load(handle)
            records = document["domains"] if document.get("version") == FILE_VERSION else None
            if not isinstance(records, dict):
                raise ValueError("not a version 1 uptime file")
            for key, value in records.items():
                domain_id, since = value
                if (
                    isinstance(domain_id, int)
                    and isinstance(since, int | float)
                    and math.isfinite(since)
                ):
                    self._since[str(key)] = (domain_id, float(since))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("ignoring %s (uptimes restart from now): %s", self.path, exc)

    def booted(self, key: str, domain_id: int) -> None:
        """The domain rebooted now (same domain id: the boot is new all the same)."""
        self._since[key] = (domain_id, self.clock())
        self._save()

    def started(self, key: str, domain_id: int) -> None:
        """The domain started. Its event may come after a status call already saw this very
        run (same domain id) and noted when: that earlier time stands."""
        record = self._since.get(key)
        if record is None or record[0] != domain_id:
            self.booted(key, domain_id)

    def stopped(self, key: str) -> None:
        if self._since.pop(key, None) is not None:
            self._save()

    def seconds(self, key: str, domain_id: int) -> int:
        """Uptime of a domain seen running with ``domain_id``."""
        record = self._since.get(key)
        if record is None or record[0] != domain_id:
            self.booted(key, domain_id)  # first seen running (or restarted while away)
            return 0
        return max(0, int(self.clock() - record[1]))

    def _save(self) -> None:
        document: dict[str, Any] = {
            "version": FILE_VERSION,
            "domains": {key: list(value) for key, value in self._since.items()},
        }
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            fd, temp_path = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=self.state_dir)
        except OSError as exc:
            logger.error("cannot save uptimes in %s: %s", self.state_dir, exc)
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, sort_keys=True)
            os.replace(temp_path, self.path)
        except OSError as exc:
            logger.error("cannot save uptimes to %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(temp_path)
