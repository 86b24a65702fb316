"""Command-line arguments of the training scripts, and a whole run held in one YAML/JSON file.

The dataclasses follow transformers' `run_clm.py` where the options overlap. Every
`TrainingArguments` option is accepted next to them. `parse_arguments` reads either plain
command-line options or a run file followed by options that override it:

    serpent-train configs/train-tiny.yaml --max_steps 10
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

RUN_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    model_config: str = field(
        metadata={
            "help": "A model config file (e.g. configs/tiny.json) to train from scratch, or a checkpoint "
            "(directory or Hub name) to fine-tune."
        }
    )
    tokenizer_name: str = field(
        default="gpt2",
        metadata={"help": "Tokenizer name on the Hub or local directory (offline: a folder with vocab.json + merges.txt)."},
    )
    train_tokenizer: int | None = field(
        default=None,
        metadata={"help": "Train a byte-level BPE with this vocabulary size on the training text instead of loading one."},
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets and models from the Hub are cached."})
    selectivity_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Learning rate of the selectivity networks θ_Δ relative to --learning_rate."}
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
        default=None, metadata={"help": "Tokens per training sequence (default: min(1024, the tokenizer's maximum length))."}
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


def run_file_to_options(path):
    """A YAML/JSON mapping {option: value} -> ["--option", "value", ...] for HfArgumentParser."""
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)  # JSON is YAML
    if not isinstance(values, dict):
        raise ValueError(f"run file {path} must hold a mapping of option names to values, got {type(values).__name__}")
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


def parse_arguments(dataclass_types, argv=None):
    """Parse `argv` (default: sys.argv[1:]) into the dataclasses; a leading run file supplies defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(RUN_FILE_SUFFIXES) and not argv[0].startswith("-"):
        if not Path(argv[0]).is_file():
            raise ValueError(f"run file {argv[0]} does not exist")
        argv = run_file_to_options(argv[0]) + argv[1:]
    parser = HfArgumentParser(dataclass_types)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
