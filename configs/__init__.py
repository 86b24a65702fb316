"""The presets: model configurations (tiny.json, small.json, ..., lra-listops.json) and run files
(train-tiny.yaml, ...), shipped inside the package as `serpent_hf.configs`, so that an installed wheel
resolves `--model_config tiny` without the repository and without the Hub.

This folder is the one copy of the files: setup.py maps it to serpent_hf.configs (as it does modeling/
and training/), and the repository's own paths, `configs/tiny.json`, keep working from its root.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
MODEL_SUFFIX = ".json"
RUN_FILE_PREFIX = "train-"


def model_presets():
    """Names of the shipped model configurations ("tiny", "small-mamba", "lra-listops", ...)."""
    return sorted(path.stem for path in FOLDER.glob(f"*{MODEL_SUFFIX}") if not path.stem.startswith(RUN_FILE_PREFIX))


def model_preset(name):
    """The shipped file of preset `name` ("tiny" or "tiny.json"), or None when there is no such preset."""
    stem = name[: -len(MODEL_SUFFIX)] if name.endswith(MODEL_SUFFIX) else name
    if "/" in name or "\\" in name or stem.startswith(RUN_FILE_PREFIX) or stem not in model_presets():
        return None
    return FOLDER / f"{stem}{MODEL_SUFFIX}"


def run_file(name):
    """The shipped run file called `name` ("train-tiny.yaml"), or None."""
    path = FOLDER / name
    return path if "/" not in name and path.name.startswith(RUN_FILE_PREFIX) and path.is_file() else None
