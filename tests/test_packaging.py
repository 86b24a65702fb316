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
                   "serpent_hf/model_cards/serpent_lm.md", "serpent_hf/metrics/top_k_accuracy/top_k_accuracy.py",
                   "serpent_hf/configs/__init__.py", "serpent_hf/configs/tiny.json", "serpent_hf/configs/base-mamba.json",
                   "serpent_hf/configs/lra-listops-cpu.json", "serpent_hf/configs/train-tiny.yaml",
                   "serpent_hf/configs/train-lra-listops-cpu.json"):
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


def install(wheel, site):
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                                "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]


GENERATE = """
import json, sys
import serpent_hf
from transformers import AutoModelForCausalLM, AutoTokenizer
assert serpent_hf.__file__.startswith(sys.argv[1]), serpent_hf.__file__
model = AutoModelForCausalLM.from_pretrained("run")
tokenizer = AutoTokenizer.from_pretrained("run")
ids = tokenizer("The river", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=6, do_sample=False)
print(json.dumps({"new_tokens": out.shape[1] - ids["input_ids"].shape[1], "vocab": model.config.vocab_size,
                  "tokenizer": len(tokenizer), "text": tokenizer.decode(out[0])}))
"""


@pytest.mark.slow
def test_the_wheel_alone_trains_tiny_with_the_defaults_evaluates_and_generates(wheel, tmp_path):
    """A user's first hour, from the wheel and a folder holding only their text: `--model_config tiny` resolves
    to the shipped preset (offline: never the Hub), the recipe defaults train it well past an untrained model's
    perplexity (about the vocabulary size, 512), serpent-eval agrees with the run's own evaluation, and the run
    loads with its tokenizer and generates."""
    import json

    site, work = tmp_path / "site", tmp_path / "work"
    install(wheel, site)
    work.mkdir()
    shutil.copyfile(CORPUS, work / "my-text.txt")
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": os.environ["PATH"],
           "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

    def run(*command):
        finished = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
        return finished

    trained = run(str(site / "bin" / "serpent-train"), "--model_config", "tiny", "--train_file", "my-text.txt",
                  "--output_dir", "run")
    assert "the preset shipped with serpent-hf" in trained.stderr
    metrics = json.loads((work / "run" / "eval_results.json").read_text())
    assert metrics["eval_perplexity"] < 256, metrics  # untrained: about 512; TrainingArguments' defaults: 452
    state = json.loads((work / "run" / "trainer_state.json").read_text())
    assert sum("loss" in entry for entry in state["log_history"]) >= 10  # a curve, not one dot
    run(str(site / "bin" / "serpent-eval"), "--model_name_or_path", "run", "--train_file", "my-text.txt",
        "--output_dir", "evaluation")  # at the run's own block size
    evaluated = json.loads((work / "evaluation" / "eval_results.json").read_text())["run"]
    assert evaluated["eval_perplexity"] == pytest.approx(metrics["eval_perplexity"], rel=1e-4)
    generated = json.loads(run(sys.executable, "-c", GENERATE, str(site)).stdout.strip().splitlines()[-1])
    assert generated["new_tokens"] == 6 and generated["vocab"] == generated["tokenizer"] == 512
    refused = subprocess.run([str(site / "bin" / "serpent-train"), "--model_config", "tiny", "--train_file",
                              "my-text.txt", "--output_dir", "run"], cwd=work, env=env, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode == 1 and "is not empty" in refused.stderr.splitlines()[-1]
