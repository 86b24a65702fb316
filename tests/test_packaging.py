"""What `pip install` puts on a user's machine: one import name, `serpent_hf`, with everything the
console commands need inside it, and nothing that a user's own `modeling.py` can shadow.

The wheel is built from a copy of the repository (so a stale build/ folder of the checkout cannot
leak into it), offline and without build isolation: setuptools from the test environment builds it.
"""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from .conftest import CORPUS, ROOT

# What a checkout holds besides the sources, at its top: environments, build outputs, caches, runs,
# data (the README's LRA commands write data/).
NOT_SOURCES = {".git", ".venv", ".ci-venv", "build", "dist", "serpent_hf.egg-info", ".pytest_cache", ".hypothesis",
               "runs", "outputs", "data", ".whl", ".gl"}


def not_sources(folder, names):
    """copytree's `ignore`: the names above at the top of the checkout, and bytecode caches anywhere."""
    return [name for name in names if name == "__pycache__" or (folder == str(ROOT) and name in NOT_SOURCES)]


COMMANDS = {
    "serpent-train": "serpent_hf.training.train_lm:command",
    "serpent-eval": "serpent_hf.training.eval_lm:command",
    "serpent-train-lra": "serpent_hf.training.train_lra:command",
    "serpent-upcycle": "serpent_hf.upcycle:command",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(ROOT, source, ignore=not_sources)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--wheel-dir", str(folder / "dist"), str(source)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    (path,) = (folder / "dist").glob("serpent_hf-*.whl")
    return path


def test_the_wheel_installs_one_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    (dist_info,) = [name for name in top_level if name.endswith(".dist-info")]
    assert top_level == {"serpent_hf", dist_info}
    for needed in ("serpent_hf/__init__.py", "serpent_hf/modeling/__init__.py", "serpent_hf/modeling/block.py",
                   "serpent_hf/training/__init__.py", "serpent_hf/training/train_lm.py",
                   "serpent_hf/model_cards/serpent_lm.md", "serpent_hf/metrics/top_k_accuracy/top_k_accuracy.py"):
        assert needed in names, f"{needed} is not in the wheel"


def test_the_wheel_declares_the_console_commands(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [name for name in archive.namelist() if name.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == COMMANDS


@pytest.mark.slow
def test_the_installed_wheel_trains_and_writes_its_model_card(wheel, tmp_path):
    """`serpent-train` from a plain (non-editable) install, in a directory that is not the checkout and
    holds a user's modeling.py: the run ends with exit status 0 and the model card, whose template
    ships inside the package."""
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    (work / "modeling.py").touch()  # a user's own files of the names the old layout installed
    (work / "training.py").touch()
    command = [str(site / "bin" / "serpent-train"), "--model_config", str(ROOT / "configs" / "tiny.json"),
               "--train_file", str(CORPUS), "--validation_articles", "2", "--train_tokenizer", "300",
               "--block_size", "32", "--max_steps", "2", "--per_device_train_batch_size", "2",
               "--max_eval_samples", "2", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true",
               "--sample_max_new_tokens", "3", "--cache_dir", str(tmp_path / "cache"), "--output_dir", "run"]
    env = {"PYTHONPATH": f"{site}{os.pathsep}{work}", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PATH": os.environ["PATH"], "HOME": str(tmp_path), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    card = (work / "run" / "README.md").read_text()
    assert "trust_remote_code=True" in card and 'from_pretrained("run")' in card
    check = subprocess.run([sys.executable, "-c", "import serpent_hf; print(serpent_hf.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, timeout=300)
    assert check.stdout.startswith(str(site)), check.stdout + check.stderr  # the run used the wheel's package


def test_a_users_modeling_py_does_not_shadow_the_package(tmp_path):
    """`cd $(mktemp -d) && touch modeling.py training.py && python -c "import serpent_hf"`."""
    (tmp_path / "modeling.py").write_text("raise ImportError('the user module was imported')\n")
    (tmp_path / "training.py").write_text("raise ImportError('the user module was imported')\n")
    program = "import serpent_hf, serpent_hf.training.train_lm, serpent_hf.training.train_lra, serpent_hf.upcycle"
    finished = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
