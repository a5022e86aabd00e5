"""Which test fleets exist on this machine: a slot per running lab, and the removal of leftovers.

A lab takes a free slot under a lock file before it creates anything; the slot fixes its
subnet (10.231.SLOT.0/24), bridge, namespace, interface and user names, so two labs running
at once never share a name or an address. The slot's record (``/run/vpsshell-fleet/
slot-NN.json``) names every resource the lab will create and the process that owns it (pid and
start time, so a reused pid is not mistaken for the owner). A record whose owner is gone is a
crashed run: the next lab that looks at that slot removes what it names, then takes the slot.
A name or a subnet already present on the machine without a record is someone else's: that
slot is skipped, never cleaned.

Everything removed here was made by a lab: processes are ended by pid, and only those of the
lab's own users or inside the lab's own network namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

REGISTRY = Path("/run/vpsshell-fleet")
SLOTS = 64
NETWORK = "10.231.{slot}.0/24"
GATEWAY_HOST_PART = 1
FIRST_HOST_PART = 10
MAX_HOSTS = 200  # host parts 10..209 of the /24


@dataclass(frozen=True)
class Plan:
    """The names and addresses of one lab, fixed by its slot; written down before use."""

    slot: int
    owner_pid: int
    owner_start: int
    root: str
    hosts: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(NETWORK.format(slot=self.slot))

    @property
    def gateway_ip(self) -> str:
        return str(self.network[GATEWAY_HOST_PART])

    def host_ip(self, index: int) -> str:
        return str(self.network[FIRST_HOST_PART + index - 1])

    @property
    def bridge(self) -> str:
        return f"vfl{self.slot}-br"  # interface names: at most 15 characters

    def veth(self, index: int) -> str:
        return f"vfl{self.slot}-h{index}"

    def namespace(self, index: int) -> str:
        return f"vpsfleet{self.slot}-h{index:02d}"

    def user(self, index: int) -> str:
        return f"vpsfleet{self.slot}-h{index:02d}"

    def indexes(self) -> range:
        return range(1, self.hosts + 1)


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z...), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2]


def _alive(pid: int, start: int) -> bool:
    return process_start_time(pid) == start


def pids_of_uid(uid: int) -> list[int]:
    """Processes whose real user is ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    found.append(int(entry.name))
                break
    return found


def pids_in_namespace(namespace: str) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False
    )
    return [int(word) for word in done.stdout.split()] if done.returncode == 0 else []


def kill_and_reap(pids: list[int], timeout: float = 20.0) -> None:
    """SIGKILL each of ``pids`` (a stopped process dies too) and wait until all are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while process_state(pid) not in (None, "Z"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {pid} survived SIGKILL for {timeout} s")
            time.sleep(0.02)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # a child of this process: reap it


def uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _run_quietly(*argv: str) -> None:
    subprocess.run(list(argv), capture_output=True, check=False, stdin=subprocess.DEVNULL)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _namespace_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def run_with_passwd_lock(*argv: str) -> None:
    """useradd/userdel, retried while another test run holds the lock on /etc/passwd."""
    for _ in range(100):
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        # another run holds the lock, or a process of the user is still being reaped
        if "lock" not in done.stderr and "used by process" not in done.stderr:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)}: /etc/passwd stayed locked")


def remove_resources(plan: Plan) -> None:
    """Remove everything ``plan`` names that exists: processes, namespaces, links, users,
    files. Safe to call on a half-built lab and more than once."""
    uids = [uid for uid in (uid_of(plan.user(i)) for i in plan.indexes()) if uid is not None]
    pids = {pid for uid in uids for pid in pids_of_uid(uid)}
    for index in plan.indexes():
        if _namespace_exists(plan.namespace(index)):
            pids.update(pids_in_namespace(plan.namespace(index)))
    pids.discard(os.getpid())
    kill_and_reap(sorted(pids))
    for index in plan.indexes():
        if _namespace_exists(plan.namespace(index)):
            _run_quietly("ip", "netns", "delete", plan.namespace(index))
        if _link_exists(plan.veth(index)):  # gone with its peer's namespace, unless half made
            _run_quietly("ip", "link", "delete", plan.veth(index))
    if _link_exists(plan.bridge):
        _run_quietly("ip", "link", "delete", plan.bridge)
    for index in plan.indexes():
        if uid_of(plan.user(index)) is not None:
            run_with_passwd_lock("userdel", plan.user(index))
    if plan.root and Path(plan.root).is_dir():
        subprocess.run(["rm", "-rf", "--one-file-system", plan.root], check=False)


def _record(slot: int) -> Path:
    return REGISTRY / f"slot-{slot:02d}.json"


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    REGISTRY.mkdir(mode=0o700, exist_ok=True)
    with open(REGISTRY / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_plan(path: Path) -> Plan | None:
    try:
        return Plan(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route and interface address of the root network namespace."""
    networks = []
    for argv in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        for entry in json.loads(done.stdout or "[]"):
            prefixes = [entry.get("dst", "")]
            prefixes += [f"{a['local']}/{a['prefixlen']}" for a in entry.get("addr_info", [])]
            for prefix in prefixes:
                if prefix and prefix != "default":
                    with contextlib.suppress(ValueError):
                        networks.append(ipaddress.IPv4Network(prefix, strict=False))
    return networks


def _names_free(plan: Plan) -> bool:
    if _link_exists(plan.bridge):
        return False
    for index in range(1, MAX_HOSTS + 1):
        if _namespace_exists(plan.namespace(index)) or _link_exists(plan.veth(index)):
            return False
    return not any(plan.network.overlaps(taken) for taken in _taken_networks())


def reserve(root: Path, hosts: int) -> Plan:
    """Take a free slot for a lab of ``hosts`` hosts whose files live in ``root``; a slot
    whose owner is gone is cleaned first."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
    me = os.getpid()
    my_start = process_start_time(me)
    assert my_start is not None
    with _registry_lock():
        for record in sorted(REGISTRY.glob("slot-*.json")):
            old = _read_plan(record)
            if old is not None and _alive(old.owner_pid, old.owner_start):
                continue
            if old is not None:
                remove_resources(old)
            record.unlink()
        for slot in range(SLOTS):
            record = _record(slot)
            if record.exists():
                continue
            plan = Plan(slot, me, my_start, str(root), hosts)
            if not _names_free(plan):
                continue
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(plan)))
            os.replace(tmp, record)
            return plan
    raise RuntimeError(f"no free test fleet slot among {SLOTS} ({REGISTRY})")


def release(plan: Plan) -> None:
    """Remove the lab's resources, then its record (last: if removal fails half way, the
    record still names what is left for the next lab to clean)."""
    remove_resources(plan)
    with _registry_lock():
        record = _record(plan.slot)
        current = _read_plan(record)
        if current is not None and (current.owner_pid, current.owner_start) == (
            plan.owner_pid,
            plan.owner_start,
        ):
            record.unlink()
