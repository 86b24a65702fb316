"""Command-line arguments of the training scripts, and a whole run held in one YAML/JSON file.

The dataclasses follow transformers' `run_clm.py` where the options overlap. Every
`TrainingArguments` option is accepted next to them. `parse_arguments` reads either plain
command-line options or a run file followed by options that override it:

    serpent-train configs/train-tiny.yaml --max_steps 10
    serpent-train configs/train-tiny.yaml --validation_file other.txt   # replaces validation_articles
    serpent-train configs/train-tiny.yaml --unset validation_articles   # back to the default

An option on the command line also removes the run file's options that choose the same thing
another way (`ALTERNATIVES`), so the command line always wins.
"""

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .. import configs

RUN_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    model_config: str = field(
        metadata={
            "help": "A preset shipped with the package (tiny, small, base, tiny-mamba, small-mamba, base-mamba) or a "
            "model config file to train from scratch, or a checkpoint (directory or Hub name) to fine-tune."
        }
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer name on the Hub or local directory (offline: a folder with vocab.json + merges.txt). "
                  "Default: a checkpoint's own tokenizer; for a new model, a BPE trained on the training text "
                  "(--train_tokenizer with the config's vocab_size)."},
    )
    train_tokenizer: int | None = field(
        default=None,
        metadata={"help": "Train a byte-level BPE with this vocabulary size on the training text instead of loading one."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets and models from the Hub are cached."})
    selectivity_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Learning rate of the selectivity networks θ_Δ relative to --learning_rate."}
    )
    compressed_branch_lr_multiplier: float = field(
        default=0.1,
        metadata={"help": "Learning rate of the compressed branches (κ < 1: their SSM and resampling weights) relative "
                  "to --learning_rate; at 1.0 Adam blows their output up early in training (training/trainer.py)."},
    )


@dataclass
class DataArguments:
    dataset_name: str = field(default="wikitext", metadata={"help": "Dataset name on the Hub (ignored when --train_file is given)."})
    dataset_config_name: str | None = field(default="wikitext-103-v1", metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "A local text file to train on (instead of the Hub dataset)."})
    validation_file: str | None = field(default=None, metadata={"help": "A local text file to evaluate on."})
    validation_articles: int | None = field(
        default=None,
        metadata={
            "help": "Split the training text into WikiText articles (top-level ' = Title = ' headings) and hold out "
            "the last N articles for evaluation."
        },
    )
    validation_split_percentage: int = field(
        default=5, metadata={"help": "Percentage of the training lines held out when there is no validation split."}
    )
    block_size: int | None = field(
        default=None, metadata={"help": "Tokens per sequence (serpent-train: 128, halved while a split of a small text holds "
                                          "less than one block; serpent-eval: the run's own, from its train_results.json, "
                                          "else min(1024, the tokenizer's maximum length))."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training blocks."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation blocks."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenise even if a cached result exists."})


@dataclass
class ReportArguments:
    sample_prompt: str = field(default="The", metadata={"help": "Prompt of the text sample generated at the end of a run."})
    sample_max_new_tokens: int = field(default=40, metadata={"help": "Length of the generated sample."})
    delta_text: str | None = field(
        default=None, metadata={"help": "Text of the Δ plot (default: the start of the evaluation text)."}
    )
    model_card_template: str | None = field(
        default=None, metadata={"help": "Jinja model card template (default: model_cards/serpent_lm.md)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty --output_dir (refused otherwise, unless resuming)."}
    )


# Options that choose the same thing in different ways: given on the command line, one replaces the run
# file's others (which the scripts would otherwise prefer silently).
ALTERNATIVES = {
    "validation_file": ("validation_articles",),
    "validation_articles": ("validation_file",),
    "validation_split_percentage": ("validation_file", "validation_articles"),
    "tokenizer_name": ("train_tokenizer",),
    "train_tokenizer": ("tokenizer_name",),
    "dataset_name": ("train_file", "validation_file"),
}


def read_run_file(path):
    """A YAML/JSON run file -> {option: value}. A run file shipped with the package ("train-tiny.yaml") is found
    by its name when no file of that name is here."""
    if not Path(path).is_file() and configs.run_file(path) is not None:
        path = configs.run_file(path)
    if not Path(path).is_file():
        raise ValueError(f"run file {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)  # JSON is YAML
    if not isinstance(values, dict):
        raise ValueError(f"run file {path} must hold a mapping of option names to values, got {type(values).__name__}")
    return values


def to_options(values):
    """{option: value} -> ["--option", "value", ...] for HfArgumentParser (None values are left out)."""
    options = []
    for key, value in values.items():
        if value is None:
            continue
        options.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            options.extend(str(item) for item in value)
        elif isinstance(value, dict):
            options.append(json.dumps(value))
        else:
            options.append(str(value))
    return options


def option_name(token):
    """"--validation-file=x" -> "validation_file"; None for a value."""
    return token[2:].split("=")[0].replace("-", "_") if token.startswith("--") else None


def take_unset(argv):
    """argv -> (argv without `--unset NAME [NAME ...]`, the names)."""
    kept, unset, unsetting = [], [], False
    for token in argv:
        if token == "--unset":
            unsetting = True
        elif unsetting and not token.startswith("-"):
            unset.append(token.replace("-", "_"))
        else:
            unsetting = False
            kept.append(token)
    return kept, unset


def parse_arguments(dataclass_types, argv=None, defaults=None):
    """Parse `argv` (default: sys.argv[1:]) into the dataclasses; a leading run file supplies defaults.

    `defaults` ({option: value}) replaces the dataclasses' own defaults: the command's recipe, which a run file
    and the command line override and `--unset NAME` returns to."""
    argv = list(sys.argv[1:] if argv is None else argv)
    values = {}
    if argv and argv[0].endswith(RUN_FILE_SUFFIXES) and not argv[0].startswith("-"):
        values, argv = read_run_file(argv[0]), argv[1:]
    argv, unset = take_unset(argv)
    known = {f.name for cls in dataclass_types for f in fields(cls)}
    for name in unset:
        if name not in known:
            raise ValueError(f"--unset {name}: no such option")
        values.pop(name, None)
    values = {**(defaults or {}), **values}
    for name in filter(None, map(option_name, argv)):
        for alternative in ALTERNATIVES.get(name, ()):
            values.pop(alternative, None)
    parser = HfArgumentParser(dataclass_types)
    return parser.parse_args_into_dataclasses(args=to_options(values) + argv, look_for_args_file=False)
