"""The isolated login-shell launcher, and the one-command demo, as a real tenant would run them."""

from __future__ import annotations

import glob
import os
import pwd
import subprocess
from pathlib import Path

from harness import BIN, Helper, run, vpsshell_as

from vpsshell.admin.launcher import install_launcher

HOSTILE_MODULE = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


def hostile_env(tmp: Path) -> tuple[dict[str, str], Path]:
    """A PYTHONPATH with sitecustomize/usercustomize and a shadowed stdlib module."""
    evil = tmp / "evil"
    evil.mkdir(mode=0o777)
    os.chmod(evil, 0o777)
    marker = evil / "marker"
    for name in ("sitecustomize.py", "usercustomize.py", "json.py", "socket.py"):
        (evil / name).write_text(HOSTILE_MODULE.format(marker=str(marker)))
    startup = evil / "startup.py"
    startup.write_text(HOSTILE_MODULE.format(marker=str(marker)))
    env = {
        "PYTHONPATH": str(evil),
        "PYTHONSTARTUP": str(startup),
        "PYTHONINSPECT": "1",
        "PYTHONWARNINGS": "error::sitecustomize.Warning",
    }
    return env, marker


def test_installed_launcher_ignores_python_environment(helper: Helper, open_dir: Path) -> None:
    launcher = open_dir / "vpsshell"
    install_launcher(str(launcher))
    assert launcher.read_text().splitlines()[0].endswith(" -I")
    env, marker = hostile_env(open_dir)
    result = vpsshell_as(
        "vpst-alice",
        helper,
        "-c",
        "list --json",
        env=env,
        program=launcher,
        stdin="import os; os.system('id')\n",
    )
    assert result.code == 0, result
    assert {d["name"] for d in result.json()} == {"web1", "web2", "stubborn"}
    assert not marker.exists(), "code from PYTHONPATH ran inside the login shell"
    assert "uid=" not in result.out  # no REPL after the command (PYTHONINSPECT)


def test_pip_wrapper_drops_into_no_repl(helper: Helper, open_dir: Path) -> None:
    env, _ = hostile_env(open_dir)
    env.pop("PYTHONPATH")
    result = vpsshell_as(
        "vpst-alice", helper, "-c", "whoami", env=env, stdin="print('REPL' + 'REACHED')\n"
    )
    assert result.code == 0, result
    assert "REPLREACHED" not in result.out + result.err


def test_demo_one_command_as_an_unprivileged_user(tenants: None) -> None:
    user = "vpst-bob"
    demo = [str(BIN / "vpsshell-demo")]
    home = pwd.getpwnam(user)
    listed = subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            f"USER={user}",
            *demo,
            "-c",
            "list --json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed
    import json

    assert {d["name"] for d in json.loads(listed.stdout)} == {"web1", "web2", "db1"}
    other = subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            *demo,
            "-c",
            "start billing",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 77, other
    leftovers = [p for p in glob.glob("/tmp/vpsshell-demo-*") if os.stat(p).st_uid == home.pw_uid]
    assert leftovers == []
    still_running = subprocess.run(["pgrep", "-u", user, "-f", "vpsshell"], capture_output=True)
    assert still_running.returncode == 1, still_running.stdout


def test_interactive_reads_lines_from_a_pipe(helper: Helper) -> None:
    result = vpsshell_as(
        "vpst-alice", helper, stdin="use web1\nstart\nstatus --json\nfrobnicate\nexit\nlist\n"
    )
    assert result.code == 0, result
    assert "using web1" in result.out and "web1: starting" in result.out
    assert "unknown command 'frobnicate'" in result.err
    state = run("vpst-alice", helper, "status web1 --json").json()["state"]
    assert state in ("starting", "running")
    assert "NAME" not in result.out  # nothing after exit ran
