"""``install`` and ``install-shell`` refuse a Python the tenants' group cannot run.

The case from the field: pyenv's Python under /root (mode 0700) was written into the launcher's
``#!`` line and every tenant login failed. Here a copy of the system Python sits under a
directory that the tenants' group cannot search; ``vpsshell-admin`` is run with that copy (as the
admin would have, from that Python) on a copy of the package that everyone can read.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import TEAM_GROUP, copy_tree_readable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(open_dir: Path, tenants: None) -> tuple[Path, Path]:
    """(the directory holding a Python copy, a config naming the test tenants' group)."""
    code = open_dir / "code"
    code.mkdir(mode=0o755)
    copy_tree_readable(ROOT / "vpsshell", code / "vpsshell")
    closed = open_dir / "pyenv"
    closed.mkdir(mode=0o700)
    shutil.copy2(os.path.realpath(sys.executable), closed / "python3")
    config = open_dir / "vpsshelld.toml"
    config.write_text(f'socket_group = "{TEAM_GROUP}"\n')
    return closed, config


def admin(python_dir: Path, config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    code = python_dir.parent / "code"
    return subprocess.run(
        [str(python_dir / "python3"), "-m", "vpsshell.admin.main", "--config", str(config), *argv],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code)},
        cwd="/",
        timeout=60,
    )


def test_install_shell_refuses_a_python_under_a_closed_directory(setup: tuple[Path, Path]) -> None:
    closed, config = setup
    launcher = closed.parent / "vpsshell"
    done = admin(closed, config, "install-shell", "--path", str(launcher))
    assert done.returncode == 1, done
    assert f"directory {closed} (mode 0700, root:root) is not searchable" in done.stderr
    assert f"for the group {TEAM_GROUP}" in done.stderr
    assert not launcher.exists()


def test_install_refuses_it_before_writing_anything(setup: tuple[Path, Path]) -> None:
    closed, config = setup
    root = closed.parent / "root"
    done = admin(closed, config, "install", "--root", str(root))
    assert done.returncode == 1, done
    assert f"directory {closed} (mode 0700" in done.stderr
    assert not root.exists()


def test_the_group_bits_count_for_the_tenants_group(setup: tuple[Path, Path]) -> None:
    closed, config = setup
    launcher = closed.parent / "vpsshell"
    os.chown(closed, 0, grp.getgrnam(TEAM_GROUP).gr_gid)
    os.chmod(closed, 0o705)  # everybody may search it, except that group
    refused = admin(closed, config, "install-shell", "--path", str(launcher))
    assert refused.returncode == 1 and "(mode 0705, root:vpst-team)" in refused.stderr, refused
    os.chmod(closed, 0o750)  # only that group may
    done = admin(closed, config, "install-shell", "--path", str(launcher))
    assert done.returncode == 0, done
    assert launcher.read_text().startswith(f"#!{closed}/python3 -I\n")
