"""Long Range Arena on the Hugging Face Trainer: ListOps, Text (byte-level IMDb), Retrieval (AAN).

    serpent-train-lra configs/train-lra-listops.json            # every argument from one JSON
    serpent-train-lra train-lra-listops-cpu.json --max_steps 200  # a shipped recipe by name, one option changed
    serpent-train-lra --task listops --model_config configs/lra-listops.json \
        --output_dir runs/listops --max_steps 80000 --per_device_train_batch_size 50 --learning_rate 0.01

ListOps reads LRA's `basic_{train,val,test}.tsv` from --data_path, or generates the data when
no path is given (--listops_write_dir keeps the generated TSVs). Text loads --dataset_name from
the Hub or --train_file/--test_file; Retrieval reads LRA's `new_aan_pairs.*.tsv` from
--data_path. The model is `SeRpEntForSequenceClassification` built from --model_config.

Optimiser, as S4 trains S4D: AdamW, with the SSM's Δ, A and B at --ssm_learning_rate and no
weight decay; matrices (and C) at --learning_rate with --weight_decay; vectors (biases, norms,
D) without weight decay; --adam_beta1/2 and --adam_epsilon apply. The learning-rate schedule and everything else
are TrainingArguments (--resume_from_checkpoint PATH or last continues a run, as in serpent-train).
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed

from ..modeling import S4DMixer
from .. import SeRpEntConfig, SeRpEntForSequenceClassification

from .. import configs
from ..cli import run_command
from . import lra_data
from .arguments import parse_arguments
from .resume import checkpoint_to_resume

# Per task: number of classes, vocabulary, LRA's maximum length, and whether longer inputs are cut.
TASKS = {
    "listops": dict(num_labels=lra_data.LISTOPS_NUM_LABELS, vocab_size=len(lra_data.LISTOPS_VOCABULARY),
                    max_length=2000, truncation=False),
    "text": dict(num_labels=2, vocab_size=lra_data.BYTE_VOCABULARY_SIZE, max_length=4096, truncation=True),
    "retrieval": dict(num_labels=2, vocab_size=lra_data.BYTE_VOCABULARY_SIZE, max_length=4000, truncation=True),
}


@dataclass
class LRAArguments:
    task: str = field(metadata={"help": "listops, text or retrieval"})
    model_config: str = field(metadata={"help": "a SeRpEntConfig JSON, e.g. configs/lra-listops.json"})
    data_path: str | None = field(default=None, metadata={"help": "directory of LRA's TSV files (ListOps, Retrieval)"})
    dataset_name: str = field(default="imdb", metadata={"help": "Text: a Hub dataset with text and label columns"})
    train_file: str | None = field(default=None, metadata={"help": "Text: local csv/json/parquet training file"})
    test_file: str | None = field(default=None, metadata={"help": "Text: local csv/json/parquet test file"})
    max_length: int | None = field(default=None, metadata={"help": "longest input (task default: LRA's)"})
    truncation: bool | None = field(default=None, metadata={"help": "cut longer inputs instead of failing"})
    listops_sizes: list[int] = field(default_factory=lambda: [96000, 2000, 2000],
                                     metadata={"help": "generated ListOps: train, validation, test sizes"})
    listops_min_length: int = field(default=500, metadata={"help": "generated ListOps: shortest expression"})
    listops_write_dir: str | None = field(default=None, metadata={"help": "write the generated ListOps TSVs here"})
    listops_seed: int = field(default=0, metadata={"help": "seed of the ListOps generator"})
    ssm_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the S4D Δ, A and B"})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        defaults = TASKS[self.task]
        self.max_length = defaults["max_length"] if self.max_length is None else self.max_length
        self.truncation = defaults["truncation"] if self.truncation is None else self.truncation


def build_datasets(args):
    """train / validation / test DatasetDict of the task."""
    if args.task == "listops":
        return lra_data.listops_datasets(args.data_path, args.max_length, args.truncation, tuple(args.listops_sizes),
                                         args.listops_seed, args.listops_min_length, args.listops_write_dir)
    if args.task == "retrieval":
        return lra_data.retrieval_datasets(args.data_path, args.max_length, args.truncation)
    return lra_data.text_datasets(args.dataset_name, args.train_file, args.test_file, args.max_length, args.truncation)


def build_model(config_path, task, **overrides):
    """SeRpEntForSequenceClassification from a config file, checked against the task's vocabulary and classes."""
    spec = TASKS[task]
    if not Path(config_path).exists() and configs.model_preset(config_path) is not None:
        config_path = str(configs.model_preset(config_path))  # "lra-listops": the preset shipped with the package
    if not Path(config_path).is_file():
        raise ValueError(f"--model_config {config_path} does not exist (presets: "
                         f"{', '.join(name for name in configs.model_presets() if name.startswith('lra-'))})")
    config = SeRpEntConfig.from_pretrained(config_path, num_labels=spec["num_labels"], **overrides)
    if config.vocab_size < spec["vocab_size"]:
        raise ValueError(f"{config_path}: vocab_size {config.vocab_size} is smaller than the {task} vocabulary "
                         f"({spec['vocab_size']} ids)")
    if config.pair_classification != (task == "retrieval"):
        raise ValueError(f"{config_path}: pair_classification must be {task == 'retrieval'} for {task}")
    return SeRpEntForSequenceClassification(config)


def build_optimizer(model, learning_rate, weight_decay, ssm_learning_rate, betas=(0.9, 0.999), eps=1e-8):
    """AdamW with S4's parameter groups: SSM (Δ, A, B) slow and undecayed, matrices decayed, vectors not."""
    recurrence = {id(p) for module in model.modules() if isinstance(module, S4DMixer)
                  for p in module.recurrence_parameters()}
    groups = {"ssm": [], "decay": [], "no_decay": []}
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        if id(parameter) in recurrence:
            groups["ssm"].append(parameter)
        elif parameter.dim() >= 2:
            groups["decay"].append(parameter)
        else:
            groups["no_decay"].append(parameter)
    # The main group first: the Trainer logs the learning rate of group 0.
    return torch.optim.AdamW([
        {"params": groups["decay"], "lr": learning_rate, "weight_decay": weight_decay},
        {"params": groups["no_decay"], "lr": learning_rate, "weight_decay": 0.0},
        {"params": groups["ssm"], "lr": ssm_learning_rate, "weight_decay": 0.0},
    ], lr=learning_rate, betas=betas, eps=eps)


def compute_metrics(prediction):
    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def build_trainer(model, training_args, datasets, ssm_learning_rate):
    optim = getattr(training_args.optim, "value", training_args.optim)
    if not optim.startswith("adamw_torch"):  # ours is torch's AdamW; another would be ignored without a word
        raise ValueError(f"serpent-train-lra trains with AdamW in S4's parameter groups; --optim {optim} is not "
                         "supported (leave --optim unset)")
    optimizer = build_optimizer(model, training_args.learning_rate, training_args.weight_decay, ssm_learning_rate,
                                (training_args.adam_beta1, training_args.adam_beta2), training_args.adam_epsilon)
    return Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        data_collator=lra_data.collate,
        compute_metrics=compute_metrics,
        optimizers=(optimizer, None),  # the Trainer builds the schedule from TrainingArguments
    )


def main(argv=None):
    # A run file (this package's recipes by name too, e.g. train-lra-listops-cpu.json) and options that override it.
    args, training_args = parse_arguments((LRAArguments, TrainingArguments), argv)
    datasets = build_datasets(args)
    set_seed(training_args.seed)  # before the model is built: the seed fixes its initial weights too
    model = build_model(args.model_config, args.task)
    trainer = build_trainer(model, training_args, datasets, args.ssm_learning_rate)
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(training_args.resume_from_checkpoint,
                                                              training_args.output_dir))
    trainer.save_model()
    metrics = trainer.evaluate(datasets["test"], metric_key_prefix="test")
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    return metrics


def command():
    """`serpent-train-lra`: exits with status 0 after a run, or with one line naming the error (serpent_hf.cli)."""
    run_command(main)


if __name__ == "__main__":
    command()
