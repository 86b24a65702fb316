"""README.md is the manual, so its commands must run as written: scripts/check_readme.py runs every code block
in order, offline, from a fresh-clone-like copy of the repository, except blocks marked as needing a network, a
GPU, minutes, or the test suite itself (`<!-- needs: WHAT -->` on the line before)."""

import importlib.util

import pytest

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts" / "check_readme.py")
check_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_readme)

README = (ROOT / "README.md").read_text(encoding="utf-8")
KNOWN_NEEDS = {"network", "gpu", "minutes", "test-suite"}


def test_blocks_and_their_markers_are_read():
    text = "x\n```bash\necho a\n```\n<!-- needs: gpu -->\n```python\nprint(1)\n```\n"
    assert check_readme.blocks(text) == [("bash", "echo a\n", None), ("python", "print(1)\n", "gpu")]


def test_the_readme_marks_only_known_needs_and_runs_its_main_commands():
    found = check_readme.blocks(README)
    assert {needs for _, _, needs in found} - {None} <= KNOWN_NEEDS
    unmarked = "".join(code for language, code, needs in found if needs is None and language in ("bash", "python"))
    for command in ("serpent-train configs/train-tiny.yaml", "serpent-train --model_config tiny", "serpent-eval",
                    "lm_eval --model hf", 'from_pretrained("runs/tiny", trust_remote_code=True)'):
        assert command in unmarked, f"{command!r} is not run by the README check"
    assert "## Results" in README and "python -m pytest -q tests" in README


def test_the_readme_names_no_path_outside_the_repository():
    assert "../" not in README and "/work/" not in README and "shared/data" not in README


def test_a_failing_block_fails_the_check(tmp_path):
    report = check_readme.run_blocks("```bash\ntrue\n```\n```bash\nfalse\necho unreached\n```\n```bash\ntrue\n```\n",
                                     tmp_path)
    assert [(index, returncode) for index, _, _, returncode, _ in report] == [(0, 0), (1, 1)]


@pytest.mark.slow
def test_every_readme_block_runs_as_written(capsys):
    status = check_readme.main([])
    printed = capsys.readouterr().out
    assert status == 0, printed[-6000:]
    assert "FAILED" not in printed and "ran " in printed
