"""The backend contract (tests/backend_contract.py) on real Xen, run inside the lab's dom0.

The Xen profile: the domains web1 and db1 that the lab tests configure (copies of the lab's
PV guest, 1 vCPU and 128 MiB each; web1's file sets no UUID, db1's sets DB1_UUID), next to
files the backend must not offer (``1234.cfg``, a numeric name; ``loose.cfg``, writable by
anyone) and Domain-0; the guest's busybox shell on hvc0 as its console. ``xl create`` takes
about 7 s under TCG, a guest's boot 8 to 13 s, a reboot up to 36 s.

The host-side test (test_lab_1_backend.py) copies this file and the contract into dom0 (the
lab's share) and runs them with the dom0 venv's Python; this prints one JSON line per check:
``{"check": NAME, "outcome": "passed"|"failed"|"skipped", "error": TEXT, "seconds": S}``.

Usage: python lab_contract.py CONFIG_DIR [CHECK...]
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import traceback

from backend_contract import CHECKS, Console, Domain, NotApplicable, Profile, run_check

DB1_UUID = "d0d0d0d0-1111-4222-8333-444455556666"  # set in db1.cfg; web1.cfg sets none
HOST = "xenlab"
STATE_DIR = "/tmp/vpsshell-lab-state"


async def xl_domid(name: str) -> str | None:
    xl = await asyncio.create_subprocess_exec(
        "/usr/sbin/xl", "domid", name, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await xl.communicate()
    return out.decode().strip() if xl.returncode == 0 else None


def xen_profile(config_dir: str) -> Profile:
    from vpsshell.backends.xen import derived_uuid  # dom0 has pyxs; the host may not

    return Profile(
        name="xen",
        table={"type": "xen", "domain_config_dir": config_dir, "host": HOST},
        domains=(
            Domain("web1", 1, 128, HOST, derived_uuid("web1")),
            Domain("db1", 1, 128, HOST, DB1_UUID),
        ),
        boot_seconds=120,
        poll_seconds=0.2,
        console=Console(
            wake=b"\r",
            prompt=b"/ # ",
            command=b"echo MARK-$((6*7))\r",
            answer=b"MARK-42",
            ends_with_domain=True,  # the pty closes with the domain
        ),
        hidden=("1234", "loose", "Domain-0"),
        numeric_id=xl_domid,
        check_seconds=300,
    )


class RecentLog(logging.Handler):
    """The backend's log lines of the current check: a failure shows them with its traceback
    (what xl said is logged, not raised)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines = [*self.lines[-29:], f"{record.levelname} {record.getMessage()}"]


def main(argv: list[str]) -> int:
    config_dir, names = argv[0], argv[1:] or list(CHECKS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    recent = RecentLog()
    logging.getLogger("vpsshell").addHandler(recent)
    profile = xen_profile(config_dir)
    failed = 0
    for name in names:
        began = time.monotonic()
        outcome, error = "passed", ""
        recent.lines = []
        logging.info("== %s", name)
        try:
            asyncio.run(run_check(profile, name, STATE_DIR))
        except NotApplicable as exc:
            outcome, error = "skipped", str(exc)
        except BaseException:
            outcome = "failed"
            error = traceback.format_exc()[-3000:]
            error += "\nbackend log of this check:\n" + "\n".join(recent.lines)
            failed += 1
        seconds = round(time.monotonic() - began, 1)
        result = {"check": name, "outcome": outcome, "error": error, "seconds": seconds}
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
