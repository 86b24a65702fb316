"""serpent-hf: SeRpEnt (selective resampling over state space models) for Hugging Face transformers."""

from pathlib import Path

from setuptools import find_packages, setup

# One import name (DESIGN.md section 4): the repository keeps modeling/, training/ and model_cards/ at its
# top, and they install inside serpent_hf, so no top-level `modeling` or `training` exists to collide
# with a user's files or another distribution. Inside the package every import is relative.
#
# How each way of running resolves `serpent_hf.modeling`:
# - a wheel (`pip install .`): the folders are copied to serpent_hf/modeling, serpent_hf/training, ...
# - an editable install (`pip install -e .`): setuptools cannot lay these folders out under serpent_hf/,
#   so it installs an import hook (a finder appended to sys.meta_path) that maps every name below to its
#   folder. When serpent_hf itself comes from the checkout's serpent_hf/ folder (the repository root on
#   sys.path, as with `python -m pytest` there), that folder has no modeling/ inside; the path-based
#   finder answers "not found" for `serpent_hf.modeling` and Python asks the hook next, which finds
#   modeling/. So the checkout imports the same package as the wheel, from any directory.
# - a plain checkout without any install, or a wheel used from the repository root (whose serpent_hf/
#   shadows the installed one), cannot find serpent_hf.modeling; serpent_hf/__init__.py says so.
#
# configs/ goes in as serpent_hf.configs (its JSON and YAML files as package data), so the presets that the
# commands accept by name (`--model_config tiny`) ship in the wheel; the repository keeps the one copy.
PACKAGE_FOLDERS = {"serpent_hf.modeling": "modeling", "serpent_hf.training": "training",
                   "serpent_hf.model_cards": "model_cards", "serpent_hf.configs": "configs"}

setup(
    name="serpent-hf",
    version="0.1.0",
    description="SeRpEnt: selective resampling for expressive state space models, as a transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[*find_packages(include=["serpent_hf", "serpent_hf.*"]), *PACKAGE_FOLDERS],
    package_dir=PACKAGE_FOLDERS,
    # evaluate loads the metric by path (a folder, not a module); the training scripts render the card template.
    package_data={"serpent_hf": ["metrics/*/*.py"], "serpent_hf.model_cards": ["*.md"],
                  "serpent_hf.configs": ["*.json", "*.yaml"]},
    install_requires=[
        "torch>=2.5",
        "transformers>=5.17,<6",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "evaluate>=0.4.3",
        "tokenizers>=0.21",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        # Build from source where no wheel fits: see README, "GPU kernels".
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        # lm-evaluation-harness: `lm_eval --model hf --model_args pretrained=RUN,trust_remote_code=True` with the
        # local text task of benchmarks/lm_eval/ (README, "Evaluate").
        "lm-eval": ["lm-eval>=0.4.5"],
        # setuptools 70.1+ builds wheels by itself: tests/test_packaging.py builds one without build isolation.
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "peft>=0.18", "setuptools>=70.1",
                 "lm-eval>=0.4.5"],
    },
    entry_points={
        "console_scripts": [
            "serpent-train=serpent_hf.training.train_lm:command",
            "serpent-eval=serpent_hf.training.eval_lm:command",
            "serpent-train-lra=serpent_hf.training.train_lra:command",
            "serpent-upcycle=serpent_hf.upcycle:command",
        ]
    },
)
