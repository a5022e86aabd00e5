"""Fixtures shared by every ring of the test suite."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# hypothesis keeps caches in a storage directory, by default .hypothesis/ in the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", "/tmp/vpsshell-hypothesis")
from hypothesis import settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

# hypothesis: reproducible runs that write nothing into the checkout (no example database)
settings.register_profile("vpsshell", derandomize=True, database=None, deadline=None)
settings.load_profile("vpsshell")

from harness import Helper, ensure_users, is_root, remove_users  # noqa: E402


@pytest.fixture(scope="session")
def tenants() -> Iterator[None]:
    """Real OS users (vpst-alice, vpst-bob, vpst-carol, vpst-mallory); needs root."""
    if not is_root():
        pytest.skip("needs root to create OS users (run the suite as root)")
    ensure_users()
    pam_file = Path("/etc/pam.d/vpsshell")
    made_pam_file = not pam_file.exists()
    if made_pam_file:  # the helper's PAM service, as `vpsshell-admin install` sets up
        shutil.copy(Path(__file__).parent.parent / "pam" / "vpsshell", pam_file)
    yield
    if not os.environ.get("VPSSHELL_KEEP_USERS"):  # others' runs still use them
        remove_users()
        if made_pam_file:  # an installed vpsshell's own file is left alone
            pam_file.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _kept_policy_copies_removed() -> Iterator[None]:
    """``policy edit`` keeps the admin's version in /tmp/vpsshell-edit-* when it cannot install
    it (that is its job, and tests provoke it); those made in this process go at the end."""
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> Any:
        path = real_mkdtemp(*args, **kwargs)
        if os.path.basename(path).startswith("vpsshell-edit-"):
            made.append(path)
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
        yield
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A temp directory every user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="vpsshell-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def helper(open_dir: Path, tenants: None) -> Iterator[Helper]:
    """A running vpsshelld on the sim backend with the default test policy."""
    running = Helper(open_dir / "helper").start()
    yield running
    running.stop()
