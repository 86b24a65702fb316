"""Evaluate causal LM checkpoints side by side: top-1 / top-5 next-token accuracy, perplexity, loss.

Any `AutoModelForCausalLM` checkpoint works (SeRpEnt, a transformers Mamba, GPT-2, ...), on the
same evaluation text and with the same metric as train_lm.py. Each checkpoint is tokenised with its
own tokenizer unless --tokenizer_name is given; compare token-level numbers only between models
that share a tokenizer. Results go to OUTPUT_DIR/eval_results.json, one entry per checkpoint.

    serpent-eval --model_name_or_path runs/serpent runs/mamba \
        --train_file wiki.valid.tokens --validation_articles 6 --block_size 256 --output_dir runs/compare
    serpent-eval --model_name_or_path runs/serpent runs/mamba ... --block_size 2048 --position_buckets 128 512 2048

--position_buckets also reports loss and top-1 by position within the block (1-128, 129-512, ...): a model
that uses long context has lower loss late in the block. It adds "by_position" to each checkpoint's
results and writes loss_by_position.png (every checkpoint's loss against position).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import Trainer, TrainingArguments, default_data_collator

from ..cli import run_command
from .arguments import DataArguments, parse_arguments
from .data import group_into_blocks, load_raw_text, load_tokenizer, resolve_block_size
from .evaluation import IGNORE_KEYS, add_perplexity, build_compute_metrics, loss_by_position, preprocess_logits_for_metrics
from .models import count_parameters, load_checkpoint
from .plots import plot_loss_by_position

SHOWN = ("eval_top1_accuracy", "eval_top5_accuracy", "eval_perplexity", "eval_loss")


@dataclass
class EvalArguments:
    model_name_or_path: list[str] = field(metadata={"help": "One or more checkpoints (directories or Hub names)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "One tokenizer for all (default: each model's own)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets and models from the Hub are cached."})
    position_buckets: list[int] | None = field(default=None, metadata={
        "help": "Upper ends of position buckets (e.g. 128 512 2048): also report loss and top-1 by position in the block."})


def trained_block_size(name):
    """The block size a serpent-train run was trained at (its train_results.json), or None."""
    results = Path(name) / "train_results.json"
    return json.loads(results.read_text()).get("train_block_size") if results.is_file() else None


def evaluate_checkpoint(name, eval_args, data_args, training_args, raw):
    tokenizer = load_tokenizer(eval_args.tokenizer_name or name, eval_args.cache_dir)
    block_size = resolve_block_size(data_args.block_size or trained_block_size(name), tokenizer)
    blocks = group_into_blocks(DatasetDict(validation=raw["validation"]), tokenizer, block_size)["validation"]
    if data_args.max_eval_samples:
        blocks = blocks.select(range(min(data_args.max_eval_samples, len(blocks))))
    model = load_checkpoint(name, eval_args.cache_dir)
    trainer = Trainer(model=model, args=training_args, eval_dataset=blocks, data_collator=default_data_collator,
                      compute_metrics=build_compute_metrics(), preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    metrics = add_perplexity(trainer.evaluate(ignore_keys=IGNORE_KEYS))
    metrics.update(model_type=model.config.model_type, parameters=count_parameters(model),
                   tokenizer=eval_args.tokenizer_name or name, eval_tokens=len(blocks) * block_size, block_size=block_size)
    if eval_args.position_buckets:
        metrics["by_position"] = loss_by_position(model.to(trainer.args.device), torch.tensor(blocks["input_ids"]),
                                                  eval_args.position_buckets, training_args.per_device_eval_batch_size)
    return metrics


def main(argv=None):
    eval_args, data_args, training_args = parse_arguments((EvalArguments, DataArguments, TrainingArguments), argv)
    raw = load_raw_text(data_args, eval_args.cache_dir, need_train=False)
    results = {name: evaluate_checkpoint(name, eval_args, data_args, training_args, raw)
               for name in eval_args.model_name_or_path}
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n| model | parameters | " + " | ".join(SHOWN) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in SHOWN) + " |")
    for name, metrics in results.items():
        print(f"| {name} | {metrics['parameters']:,} | " + " | ".join(f"{metrics[key]:.4f}" for key in SHOWN) + " |")
    if eval_args.position_buckets:
        report_by_position(results, output_dir / "loss_by_position.png")
    return results


def report_by_position(results, path):
    buckets = [bucket["name"] for bucket in next(iter(results.values()))["by_position"]["buckets"]]
    print("\n| model | " + " | ".join(f"loss / top-1, positions {name}" for name in buckets) + " |")
    print("| --- | " + " | ".join("---" for _ in buckets) + " |")
    for name, metrics in results.items():
        print(f"| {name} | " + " | ".join(f"{bucket['loss']:.4f} / {bucket['top1']:.4f}"
                                          for bucket in metrics["by_position"]["buckets"]) + " |")
    plot_loss_by_position({name: metrics["by_position"] for name, metrics in results.items()}, path)


def command():
    """`serpent-eval`: exits with status 0 after a run, or with one line naming the error (serpent_hf.cli)."""
    run_command(main)


if __name__ == "__main__":
    command()
