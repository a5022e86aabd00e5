"""Loading a policy directory: file names, ownership and mode checks, symlinks, fingerprints."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest

from vpsshell.policy import POLICY_FILE_RE, Policy, dir_fingerprint, load_policy_dir
from vpsshell.policy import loader as policy_loader
from vpsshell.policy import parser as policy_parser
from vpsshell.policy.model import MAX_FILE_BYTES

ME = frozenset({os.geteuid()})
NOT_ME = frozenset({os.geteuid() + 1})
NOON = dt.datetime(2026, 6, 1, 12, 0)


def make_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policy.d"
    directory.mkdir()
    directory.chmod(0o755)
    return directory


def write(directory: Path, name: str, text: str | bytes, mode: int = 0o644) -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def load(directory: Path, trusted: frozenset[int] = ME) -> Policy:
    return load_policy_dir(str(directory), trusted_uids=trusted)


def error_strings(policy: Policy) -> list[str]:
    return [str(e) for e in policy.errors]


def test_loads_files_in_sorted_order_with_global_sets(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "20-rules.policy", "allow group:acme @operator @acme\n")
    write(d, "10-sets.policy", "domains @acme = acme-web acme-db\n")
    policy = load(d)
    assert policy.errors == []
    assert policy.files == [str(d / "10-sets.policy"), str(d / "20-rules.policy")]
    assert policy.rules[0].location == "20-rules.policy:1"
    assert policy.decide("x", ["acme"], "start", "acme-db", now=NOON).allowed


@pytest.mark.parametrize(
    "name",
    [
        "x.policy~",
        ".#x.policy",
        ".hidden.policy",
        "x.policy.dpkg-old",
        "x.policy.swp",
        "X.policy",
        "tenant bob.policy",
        "README",
        "x.policy\n",
    ],
)
def test_other_file_names_are_ignored_silently(tmp_path: Path, name: str) -> None:
    d = make_dir(tmp_path)
    write(d, "10-ok.policy", "allow user:a start web1\n")
    # unparseable and world-writable: would break the policy if it were read
    write(d, name, "this is not policy\n", mode=0o666)
    policy = load(d)
    assert policy.errors == []
    assert policy.files == [str(d / "10-ok.policy")]
    assert policy.ignored_files == [name]
    assert POLICY_FILE_RE.match(name) is None or name.startswith(".")


def test_policy_file_re_accepts_the_documented_names() -> None:
    for name in ["10-tenants.policy", "a_b.c-d.policy", "0.policy"]:
        assert POLICY_FILE_RE.fullmatch(name)


def test_error_in_one_file_breaks_all_and_names_the_file(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "10-good.policy", "allow user:a start web1\n")
    write(d, "20-bad.policy", "# x\nallow user:a start *\n")
    policy = load(d)
    assert error_strings(policy)[0].startswith("20-bad.policy:2: '*' in DOMAINS")
    decision = policy.decide("a", [], "start", "web1", now=NOON)
    assert not decision.allowed and decision.broken


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664, 0o620])
def test_group_or_world_writable_file_breaks_policy(tmp_path: Path, mode: int) -> None:
    d = make_dir(tmp_path)
    write(d, "10-good.policy", "allow user:a start web1\n")
    write(d, "20-open.policy", "allow user:mallory * web1\n", mode=mode)
    policy = load(d)
    assert error_strings(policy) == [
        f"20-open.policy:0: file is group- or world-writable (mode {mode:04o}); run chmod go-w"
    ]
    assert not policy.decide("a", [], "start", "web1", now=NOON).allowed
    assert not policy.decide("mallory", [], "start", "web1", now=NOON).allowed


def test_file_not_owned_by_a_trusted_uid_breaks_policy(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "10-a.policy", "allow user:a start web1\n")
    # the directory check fails too; both are reported
    policy = load(d, trusted=NOT_ME)
    messages = error_strings(policy)
    assert messages[0].startswith(f"{d}:0: policy directory is owned by uid {os.geteuid()}")
    assert messages[1].startswith(f"10-a.policy:0: file is owned by uid {os.geteuid()}")
    assert policy.broken


def test_symlinked_policy_file_is_refused(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    target = write(tmp_path, "elsewhere.txt", "allow user:a * web1\n")
    (d / "10-link.policy").symlink_to(target)
    policy = load(d)
    assert error_strings(policy) == ["10-link.policy:0: is a symbolic link (refused)"]
    assert not policy.decide("a", [], "start", "web1", now=NOON).allowed


def test_directory_and_fifo_named_like_policy_files_are_errors(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    (d / "10-dir.policy").mkdir()
    os.mkfifo(d / "20-fifo.policy", 0o644)
    result: list[Policy] = []
    worker = threading.Thread(target=lambda: result.append(load(d)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "loading a directory with a FIFO blocked"
    assert error_strings(result[0]) == [
        "10-dir.policy:0: is not a regular file",
        "20-fifo.policy:0: is not a regular file",
    ]


def test_missing_or_unsafe_directory_breaks_policy(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert error_strings(load(missing)) == [f"{missing}:0: policy directory does not exist"]
    a_file = write(tmp_path, "file", "")
    assert error_strings(load(a_file)) == [f"{a_file}:0: policy directory is not a directory"]
    d = make_dir(tmp_path)
    write(d, "10-a.policy", "allow user:a start web1\n")
    d.chmod(0o777)
    policy = load(d)
    assert error_strings(policy) == [
        f"{d}:0: policy directory is group- or world-writable (mode 0777); run chmod go-w"
    ]
    assert not policy.decide("a", [], "start", "web1", now=NOON).allowed
    d.chmod(0o755)
    assert load(d).decide("a", [], "start", "web1", now=NOON).allowed


def test_empty_directory_is_a_valid_policy_that_denies(tmp_path: Path) -> None:
    policy = load(make_dir(tmp_path))
    assert policy.errors == [] and policy.files == []
    assert not policy.decide("a", [], "status", "web1", now=NOON).allowed


def test_non_utf8_file_is_an_error_with_line(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "10-a.policy", b"allow user:a start web1\n# caf\xe9\n")
    assert error_strings(load(d)) == ["10-a.policy:2: not valid UTF-8"]


def test_oversized_file_is_an_error(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "10-big.policy", b"#" * (MAX_FILE_BYTES + 1))
    assert error_strings(load(d)) == [f"10-big.policy:0: file larger than {MAX_FILE_BYTES} bytes"]


def test_fingerprint_tracks_edits(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    path = write(d, "10-a.policy", "allow user:a start web1\n")
    policy = load(d)
    assert policy.fingerprint() == dir_fingerprint(str(d))
    assert dir_fingerprint(str(d)) == dir_fingerprint(str(d))  # stable while untouched
    baseline = dir_fingerprint(str(d))
    path.write_text("allow user:a start web2\n")  # same size, new content
    os.utime(path, ns=(1, 1_000_000_000))
    assert dir_fingerprint(str(d)) != baseline
    baseline = dir_fingerprint(str(d))
    path.chmod(0o666)
    assert dir_fingerprint(str(d)) != baseline
    baseline = dir_fingerprint(str(d))
    write(d, "20-new.policy", "")
    assert dir_fingerprint(str(d)) != baseline
    assert load(d).fingerprint() == dir_fingerprint(str(d))


def test_fingerprint_of_missing_directory_does_not_raise(tmp_path: Path) -> None:
    assert dir_fingerprint(str(tmp_path / "nope"))[0] == "error"


# -- overlay: a change validated as the helper will load it -----------------------------------


def test_overlay_is_loaded_as_if_installed(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    write(d, "10-a.policy", "domains @acme = acme-web\nallow user:a start web1\n")
    write(d, "20-b.policy", "allow user:b start web2\n")
    overlay = {"20-b.policy": None, "15-new.policy": "allow group:acme @operator @acme\n"}
    policy = load_policy_dir(str(d), trusted_uids=ME, overlay=overlay)
    assert policy.errors == []
    assert [r.location for r in policy.rules] == ["10-a.policy:2", "15-new.policy:1"]
    assert policy.files == [str(d / "10-a.policy"), str(d / "15-new.policy")]
    assert policy.fingerprint() == dir_fingerprint(str(d))
    assert [r.location for r in load(d).rules] == ["10-a.policy:2", "20-b.policy:1"]  # untouched
    # the other files are checked as the helper checks them; the overlaid one is about to be
    # installed root-owned, so its current owner does not matter
    problems = error_strings(load_policy_dir(str(d), trusted_uids=NOT_ME, overlay=overlay))
    assert any(p.startswith("10-a.policy:0: file is owned by") for p in problems)
    assert not any(p.startswith("15-new.policy:0") for p in problems)
    with pytest.raises(ValueError):
        load_policy_dir(str(d), trusted_uids=ME, overlay={"x.policy~": ""})


def test_overlay_counts_against_every_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make_dir(tmp_path)
    for i in range(3):
        write(d, f"1{i}-a.policy", f"allow user:a start web{i}\n")
    monkeypatch.setattr(policy_loader, "MAX_FILES", 3)
    monkeypatch.setattr(policy_loader, "MAX_TOTAL_BYTES", 130)
    monkeypatch.setattr(policy_parser, "MAX_RULES", 4)
    assert load(d).errors == []

    def problems(overlay: dict[str, str | None]) -> list[str]:
        return error_strings(load_policy_dir(str(d), trusted_uids=ME, overlay=overlay))

    assert problems({"20-b.policy": "# a fourth file\n"}) == [f"{d}:0: more than 3 policy files"]
    assert problems({"10-a.policy": "# " + "x" * 80 + "\n"}) == [
        "12-a.policy:0: policy directory holds more than 130 bytes"
    ]
    two = "allow user:b start web1\nallow user:b start web2\n"
    three = two + "allow user:b start web3\n"
    assert problems({"11-a.policy": two}) == []  # exactly at the limit
    assert problems({"11-a.policy": three}) == ["12-a.policy:1: too many rules (limit 4)"]
    assert problems({"10-a.policy": None, "20-b.policy": three}) == [
        "20-b.policy:3: too many rules (limit 4)"
    ]
