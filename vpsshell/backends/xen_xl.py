"""The xen backend's dealings with ``xl``: argv construction, running it, reading its output.

Every ``xl`` command line is built here, from two kinds of values only: a ``ResolvedDomain``
(a numeric domain id that the backend read from ``xl list`` for a UUID it had authorized, and
checked against XenStore) or a ``DomainConfigFile`` (``DIR/NAME.cfg`` found by the backend's own
directory scan). A bare string never reaches an argv: each builder refuses anything else with
``TypeError``. ``xl`` runs from its absolute path with a fixed, minimal environment, no shell,
stdin from /dev/null, its own session, and a timeout.

The parsers read ``xl list -v`` (state flags and libxl's shutdown reason code per domain id) and
``xl list -l`` / ``xl create -n`` (the domain configuration as JSON). They never trust a name
for identity: during teardown ``xl list -v`` shows a dying domain's name as ``(null)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from vpsshell.backends.base import DomainState
from vpsshell.checks import UUID_PATTERN, is_offered_domain_name, is_sysrq_key, is_uuid

XL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
OUTPUT_LIMIT_BYTES = 8 << 20  # more than any xl list of a real host; beyond it, refuse

NIL_UUID = "00000000-0000-0000-0000-000000000000"
DOMID_MAX = 0x7FEF  # DOMID_FIRST_RESERVED - 1: ids above are Xen's own (DOMID_SELF, ...)

# libxl_shutdown_reason (tools/libs/light/libxl_types.idl); xl list -v prints it in hex.
POWEROFF, REBOOT, SUSPEND, CRASH, WATCHDOG, SOFT_RESET = range(6)
REASON_NAMES = {
    POWEROFF: "poweroff",
    REBOOT: "reboot",
    SUSPEND: "suspend",
    CRASH: "crash",
    WATCHDOG: "watchdog",
    SOFT_RESET: "soft_reset",
}
RESTART_REASONS = frozenset({REBOOT, SOFT_RESET})  # xl's monitor builds the domain anew
CRASH_REASONS = frozenset({CRASH, WATCHDOG})


def usable_name(name: str) -> bool:
    """A name vpsshell offers to tenants: the helper's rule, never all digits (a domain id)."""
    return is_offered_domain_name(name) and name != "Domain-0"


# -- what may appear on an xl command line -------------------------------------------------


@dataclass(frozen=True)
class ResolvedDomain:
    """A running domain, resolved from a UUID to its current numeric id for one action."""

    domid: int
    uuid: str
    name: str

    def __post_init__(self) -> None:
        if isinstance(self.domid, bool) or not isinstance(self.domid, int):
            raise TypeError(f"domain id must be an int, got {self.domid!r}")
        if not 1 <= self.domid <= DOMID_MAX:  # never Domain-0, never a reserved id
            raise ValueError(f"domain id out of range: {self.domid}")
        if not is_uuid(self.uuid):
            raise ValueError(f"not a UUID: {self.uuid!r}")

    @property
    def arg(self) -> str:
        return str(self.domid)


@dataclass(frozen=True)
class DomainConfigFile:
    """``DIR/NAME.cfg``, as found by the backend's scan of ``domain_config_dir``."""

    directory: str
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not usable_name(self.name):
            raise ValueError(f"not a usable domain name: {self.name!r}")
        if (
            not isinstance(self.directory, str)
            or not self.directory.startswith("/")
            or ".." in self.directory.split("/")
        ):
            raise ValueError(f"not an absolute directory: {self.directory!r}")

    @property
    def path(self) -> str:
        return f"{self.directory.rstrip('/')}/{self.name}.cfg"


def _domain(target: object) -> ResolvedDomain:
    if not isinstance(target, ResolvedDomain):
        raise TypeError(f"xl needs a ResolvedDomain, not {type(target).__name__}")
    return target


def _config(target: object) -> DomainConfigFile:
    if not isinstance(target, DomainConfigFile):
        raise TypeError(f"xl create needs a DomainConfigFile, not {type(target).__name__}")
    return target


def _uuid_override(uuid: object) -> str:
    if not is_uuid(uuid) or uuid == NIL_UUID:
        raise ValueError(f"not a UUID: {uuid!r}")
    return f'uuid="{uuid}"'


class XlCommands:
    """The fixed set of ``xl`` command lines the backend uses."""

    def __init__(self, xl: str) -> None:
        if not xl.startswith("/"):
            raise ValueError(f"xl must be an absolute path, got {xl!r}")
        self.xl = xl

    def list_verbose(self) -> list[str]:
        return [self.xl, "list", "-v"]

    def list_long(self) -> list[str]:
        return [self.xl, "list", "-l"]

    def dry_run(self, config: DomainConfigFile) -> list[str]:
        return [self.xl, "create", "-n", _config(config).path]

    def create(self, config: DomainConfigFile, uuid: str) -> list[str]:
        """Start from the admin's file; the UUID is the one the backend tracks the domain by
        (the file's own, or the one it derived for a file without one)."""
        return [self.xl, "create", _config(config).path, _uuid_override(uuid)]

    def shutdown(self, domain: ResolvedDomain) -> list[str]:
        # -F: a guest without PV drivers (HVM) gets an ACPI power button instead
        return [self.xl, "shutdown", "-F", _domain(domain).arg]

    def reboot(self, domain: ResolvedDomain) -> list[str]:
        return [self.xl, "reboot", "-F", _domain(domain).arg]

    def destroy(self, domain: ResolvedDomain) -> list[str]:
        return [self.xl, "destroy", _domain(domain).arg]

    def trigger_reset(self, domain: ResolvedDomain) -> list[str]:
        return [self.xl, "trigger", _domain(domain).arg, "reset"]

    def sysrq(self, domain: ResolvedDomain, key: str) -> list[str]:
        if not is_sysrq_key(key):
            raise ValueError(f"not a SysRq key: {key!r}")
        return [self.xl, "sysrq", _domain(domain).arg, key]


# -- running xl ---------------------------------------------------------------------------


class XlError(Exception):
    """xl could not be run, failed, or did not finish in time."""

    def __init__(self, message: str, *, timed_out: bool = False, stderr: str = "") -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.stderr = stderr


@dataclass(frozen=True)
class XlResult:
    stdout: str
    stderr: str


async def run_xl(argv: list[str], timeout: float) -> XlResult:
    """Run one xl command; raises ``XlError`` on a non-zero exit, a timeout or no xl."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=XL_ENV,
            cwd="/",
            start_new_session=True,  # xl create's monitor must not share the helper's signals
        )
    except OSError as exc:
        raise XlError(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5)
        raise XlError(
            f"{' '.join(argv[1:3])} did not finish in {timeout:g} s", timed_out=True
        ) from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    stderr = err[:65536].decode("utf-8", "replace")
    if proc.returncode != 0:
        raise XlError(f"{' '.join(argv[1:3])} exited with {proc.returncode}", stderr=stderr)
    if len(out) > OUTPUT_LIMIT_BYTES:
        raise XlError(f"{' '.join(argv[1:3])} printed more than {OUTPUT_LIMIT_BYTES} bytes")
    return XlResult(out.decode("utf-8", "replace"), stderr)


# -- parsing ------------------------------------------------------------------------------


class XlParseError(ValueError):
    """xl printed something this module does not understand."""


@dataclass(frozen=True)
class VerboseRow:
    """One line of ``xl list -v``."""

    name: str  # "(null)" while the domain is torn down
    domid: int
    mem_mib: int
    vcpus: int
    flags: str  # six characters: r b p s <reason letter> d
    uuid: str
    reason: int | None  # libxl shutdown reason, when the domain has shut down

    @property
    def shutdown(self) -> bool:
        return self.flags[3] == "s"

    @property
    def dying(self) -> bool:
        return self.flags[5] == "d"

    @property
    def paused(self) -> bool:
        return self.flags[2] == "p"

    @property
    def crashed(self) -> bool:
        return self.flags[4] == "c" or (self.shutdown and self.reason in CRASH_REASONS)


_VERBOSE_LINE = re.compile(
    r"(?P<name>.+?)\s+(?P<domid>\d+)\s+(?P<mem>\d+)\s+(?P<vcpus>\d+)\s+"
    r"(?P<flags>[-a-z]{6})\s+(?P<time>\d+(?:\.\d+)?)\s+"
    rf"(?P<uuid>{UUID_PATTERN})"
    r"(?:\s+(?P<reason>-|[0-9a-f]+))?(?:\s+.*)?\Z"
)


def parse_list_verbose(text: str) -> tuple[list[VerboseRow], list[str]]:
    """Rows of ``xl list -v``, and the lines that could not be read (for the log)."""
    rows: list[VerboseRow] = []
    bad: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Name "):
            continue
        match = _VERBOSE_LINE.match(line.rstrip())
        if match is None:
            bad.append(line)
            continue
        reason_text = match["reason"]
        reason = None if reason_text in (None, "-") else int(reason_text, 16)
        flags = match["flags"]
        rows.append(
            VerboseRow(
                name=match["name"],
                domid=int(match["domid"]),
                mem_mib=int(match["mem"]),
                vcpus=int(match["vcpus"]),
                flags=flags,
                uuid=match["uuid"],
                reason=reason if flags[3] == "s" else None,
            )
        )
    return rows, bad


@dataclass(frozen=True)
class DomainFacts:
    """What a domain configuration says (``xl list -l`` per domain, or ``xl create -n``)."""

    name: str
    uuid: str | None
    type: str  # pv | pvh | hvm
    vcpus: int
    memory_mib: int


def facts_from_config(config: Any) -> DomainFacts:
    """Read a libxl_domain_config JSON object (``c_info`` + ``b_info``)."""
    if not isinstance(config, dict):
        raise XlParseError("domain config is not an object")
    c_info = config.get("c_info")
    b_info = config.get("b_info", {})
    if not isinstance(c_info, dict) or not isinstance(b_info, dict):
        raise XlParseError("domain config has no c_info/b_info")
    name = c_info.get("name")
    uuid = c_info.get("uuid")
    dom_type = c_info.get("type", "pv")
    vcpus: Any = b_info.get("max_vcpus", 1)
    memkb: Any = b_info.get("target_memkb", b_info.get("max_memkb", 0))
    if not isinstance(name, str) or not isinstance(dom_type, str):
        raise XlParseError("domain config has no name")
    if uuid is not None and (not isinstance(uuid, str) or not is_uuid(uuid.lower())):
        raise XlParseError(f"domain config has a malformed uuid: {uuid!r}")
    for value in (vcpus, memkb):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise XlParseError("domain config has malformed vcpus or memory")
    return DomainFacts(
        name=name,
        uuid=uuid.lower() if isinstance(uuid, str) else None,
        type=dom_type,
        vcpus=vcpus,
        memory_mib=int(memkb) // 1024,
    )


def parse_list_long(text: str) -> dict[int, DomainFacts]:
    """``xl list -l``: the configuration of each domain, by domain id (Domain-0 left out).
    Domains that are shutting down or dying are usually missing from it."""
    try:
        document = json.loads(text or "[]")
    except ValueError as exc:
        raise XlParseError(f"xl list -l is not JSON: {exc}") from None
    if not isinstance(document, list):
        raise XlParseError("xl list -l is not a JSON array")
    facts: dict[int, DomainFacts] = {}
    for entry in document:
        if not isinstance(entry, dict):
            raise XlParseError("xl list -l entry is not an object")
        domid = entry.get("domid")
        if isinstance(domid, bool) or not isinstance(domid, int):
            raise XlParseError("xl list -l entry has no domid")
        if domid == 0:
            continue
        facts[domid] = facts_from_config(entry.get("config"))
    return facts


def parse_dry_run(text: str) -> DomainFacts:
    """``xl create -n FILE``: the configuration xl would build, as JSON."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise XlParseError(f"xl create -n did not print JSON: {exc}") from None
    return facts_from_config(document)


def domain_state(row: VerboseRow) -> DomainState:
    """The vpsshell state of a domain that exists (``xl list -v`` flags + reason code)."""
    if row.crashed:
        return DomainState.CRASHED
    if row.shutdown:
        if row.reason in RESTART_REASONS:
            return DomainState.STARTING  # xl's monitor is about to build it again
        return DomainState.SHUTTING_DOWN
    if row.dying:
        return DomainState.SHUTTING_DOWN
    if row.paused:
        return DomainState.PAUSED
    return DomainState.RUNNING


def shutdown_event(reason: int | None) -> tuple[str, str] | None:
    """The event for a domain seen shut down (not yet destroyed) with this reason; None for
    the reasons after which xl builds the domain again (the event comes when it is back)."""
    if reason is None or reason in RESTART_REASONS:
        return None
    if reason in CRASH_REASONS:
        return ("crashed", REASON_NAMES[reason])
    return ("shutdown", REASON_NAMES.get(reason, f"reason-{reason}"))


def gone_event(reason: int | None) -> tuple[str, str]:
    """The event for a domain that no longer exists; ``reason`` is the shutdown reason last
    seen for it (None: it was destroyed without shutting down, as ``xl destroy`` does)."""
    if reason is None:
        return ("stopped", "destroyed")
    if reason == POWEROFF:
        return ("stopped", "shutdown")
    if reason == SUSPEND:
        return ("stopped", "saved")
    if reason in CRASH_REASONS:
        return ("stopped", "crashed")
    return ("stopped", REASON_NAMES.get(reason, f"reason-{reason}"))


# -- the admin's domain config files ------------------------------------------------------

_UUID_KEY = re.compile(r"\s*uuid\s*=")
_UUID_STATEMENT = re.compile(r"\s*uuid\s*=\s*([\"'])([0-9A-Fa-f-]{36})\1\s*\Z")


def config_file_uuid(text: str) -> str | None:
    """The ``uuid = "..."`` of an xl domain config file, or None when it sets none (xl would
    then make up a new one at every create). Raises ``ValueError`` for a uuid line this
    function cannot read with certainty: better no domain than the wrong identity."""
    found: list[str] = []
    for statement in _statements(text):
        if not _UUID_KEY.match(statement):
            continue
        match = _UUID_STATEMENT.match(statement)
        if match is None or not is_uuid(match[2].lower()):
            raise ValueError(f"unreadable uuid setting: {statement.strip()[:80]!r}")
        found.append(match[2].lower())
    if len(set(found)) > 1:
        raise ValueError("more than one uuid setting")
    return found[0] if found else None


def _statements(text: str) -> list[str]:
    """Split xl config text into statements (newline or ';'), comments removed, quotes kept."""
    statements: list[str] = []
    current: list[str] = []
    quote = ""
    comment = False
    for ch in text:
        if comment:
            if ch == "\n":
                comment = False
                statements.append("".join(current))
                current = []
            continue
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
            current.append(ch)
        elif ch == "#":
            comment = True
        elif ch in "\n;":
            statements.append("".join(current))
            current = []
        else:
            current.append(ch)
    statements.append("".join(current))
    return statements
