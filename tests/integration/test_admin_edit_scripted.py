"""``policy edit`` in scripts: ``--yes`` applies a valid edit without asking and discards one
with errors; the editor it runs is named first, also when it falls back to ``vi``.

The editor is a shell script standing in for the admin; the policy reaches the real helper and
the real ``vpsshell`` as a tenant shows the effect.
"""

from __future__ import annotations

from pathlib import Path

from harness import Helper, run, vpsshell_admin

GRANT_WEB2 = 'echo "allow user:vpst-bob @viewer web2" >> "$1"\n'


def editor_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return path


def test_yes_applies_a_valid_edit_with_no_one_to_ask(helper: Helper, open_dir: Path) -> None:
    editor = editor_script(open_dir / "ed.sh", GRANT_WEB2)
    result = vpsshell_admin(
        helper, "policy", "edit", "--yes", "10-tenants.policy", env={"EDITOR": str(editor)}
    )
    assert result.code == 0, result
    assert f"with {editor} ($EDITOR)" in result.err
    assert "What now?" not in result.out
    assert "+ vpst-bob status,watch,log,events web2" in result.out
    assert run("vpst-bob", helper, "status web2").code == 0


def test_yes_discards_an_edit_with_errors(helper: Helper, open_dir: Path) -> None:
    before = (helper.policy_dir / "10-tenants.policy").read_text()
    editor = editor_script(open_dir / "ed.sh", 'echo "allow user:vpst-bob @operatr web2" >> "$1"\n')
    result = vpsshell_admin(
        helper, "policy", "edit", "-y", "10-tenants.policy", env={"VISUAL": str(editor)}
    )
    assert result.code == 1, result
    assert "unknown set @operatr" in result.out and "discarded" in result.out
    assert f"with {editor} ($VISUAL)" in result.err
    assert (helper.policy_dir / "10-tenants.policy").read_text() == before


def test_without_an_editor_variable_vi_is_named_and_run(helper: Helper, open_dir: Path) -> None:
    bin_dir = open_dir / "bin"
    bin_dir.mkdir()
    editor_script(bin_dir / "vi", GRANT_WEB2)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = vpsshell_admin(helper, "policy", "edit", "--yes", "10-tenants.policy", env=env)
    assert result.code == 0, result
    assert "with vi (neither $VISUAL nor $EDITOR is set)" in result.err
    # without --yes, end of input still means discard (the visudo-like default)
    again = vpsshell_admin(helper, "policy", "edit", "10-tenants.policy", env=env)
    assert again.code == 1, again
    assert "discarded; nothing was changed" in again.out
