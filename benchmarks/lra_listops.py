"""ListOps on CPU: SeRpEnt+S4D vs the S4D baseline of matching size, same budget, held-out accuracy.

What it does:
    * generates ListOps (training/lra_data.py, LRA's generator) with expressions of 500-1000
      tokens: a training set and a disjoint held-out set, from one seed;
    * trains SeRpEnt+S4D (configs/lra-listops-cpu.json: hidden 26, 4 layers, rates 1, 0.5, 0.25)
      and the S4D baseline (configs/lra-listops-cpu-s4d.json: hidden 64, 4 layers, rate 1; within
      3% of the parameters) with the same budget: steps, batch size, learning-rate schedule, seed
      and data order (training/train_lra.py's Trainer and optimiser groups);
    * reports the held-out accuracy of both, their difference, and the majority-class accuracy
      of the held-out set for scale; prints a table and writes JSON.

Run (the defaults: 1,500 steps of 8 expressions, one pass over 12,000 training expressions,
500 held out, one thread; about 12 minutes per model on a CPU core):
    python benchmarks/lra_listops.py
    python benchmarks/lra_listops.py --max_steps 1500 --batch_size 8 --train_size 12000 --eval_size 500 --seed 0 \
        --threads 1 --output benchmarks/results/lra_listops.json

One thread by default: on a shared 2-core machine, two OpenMP threads wait for each other on
every operation whenever another process holds the second core (measured: 12 s instead of
0.36 s per SeRpEnt forward + backward at batch 8, length 900).

A CPU budget of a few hundred steps is far from LRA's 80,000: the numbers compare the two
models at equal (small) compute, they are not LRA results.
"""

import argparse
import collections
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

import torch
from transformers import TrainingArguments, set_seed

from serpent_hf.training import lra_data
from serpent_hf.training.train_lra import build_model, build_trainer

MODELS = {
    "serpent-s4d": REPO / "configs" / "lra-listops-cpu.json",
    "s4d": REPO / "configs" / "lra-listops-cpu-s4d.json",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ListOps: SeRpEnt+S4D vs S4D at the same budget (CPU).")
    parser.add_argument("--train_size", type=int, default=12000)
    parser.add_argument("--eval_size", type=int, default=500)
    parser.add_argument("--min_length", type=int, default=500)
    parser.add_argument("--max_length", type=int, default=1000)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--ssm_learning_rate", type=float, default=0.001)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--warmup_ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "lra_listops.json"))
    parser.add_argument("--run_dir", default="/tmp/lra_listops_runs")
    return parser.parse_args(argv)


def train_and_evaluate(name, config_path, datasets, args):
    set_seed(args.seed)  # the same initialisation stream and data order for every model
    model = build_model(config_path, "listops")
    parameters = sum(p.numel() for p in model.parameters())
    training_args = TrainingArguments(
        output_dir=f"{args.run_dir}/{name}", max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, lr_scheduler_type="cosine", warmup_steps=args.warmup_ratio,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: less padding, same for both models
        seed=args.seed, logging_steps=25, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )
    trainer = build_trainer(model, training_args, datasets, args.ssm_learning_rate)
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    metrics = trainer.evaluate(datasets["test"], metric_key_prefix="heldout")
    return {
        "config": str(Path(config_path).relative_to(REPO)),
        "parameters": parameters,
        "heldout_accuracy": metrics["heldout_accuracy"],
        "heldout_loss": metrics["heldout_loss"],
        "last_logged_train_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "mean_train_loss": train_output.training_loss,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / args.max_steps, 3),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    datasets = lra_data.listops_datasets(None, args.max_length, False, (args.train_size, 0, args.eval_size), args.seed,
                                         args.min_length)
    lengths = [len(ids) for ids in datasets["train"]["input_ids"]]
    heldout_labels = collections.Counter(datasets["test"]["labels"])
    print(f"generated {args.train_size} + {args.eval_size} ListOps expressions of {min(lengths)}-{max(lengths)} tokens "
          f"in {time.perf_counter() - start:.0f}s")
    results = {}
    for name in args.models:
        print(f"\n=== {name}: {MODELS[name].name}, {args.max_steps} steps of {args.batch_size} ===", flush=True)
        results[name] = train_and_evaluate(name, MODELS[name], datasets, args)
        print(json.dumps(results[name], indent=2), flush=True)

    majority = max(heldout_labels.values()) / args.eval_size
    report = {
        "benchmark": "ListOps (generated, LRA's generator), held-out accuracy at equal budget",
        "command": "python benchmarks/lra_listops.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "budget": {"max_steps": args.max_steps, "batch_size": args.batch_size, "examples_seen": args.max_steps *
                   args.batch_size, "learning_rate": args.learning_rate, "ssm_learning_rate": args.ssm_learning_rate,
                   "weight_decay": args.weight_decay, "schedule": f"cosine, warmup {args.warmup_ratio:.0%}",
                   "seed": args.seed},
        "data": {"train_size": args.train_size, "heldout_size": args.eval_size,
                 "lengths": [args.min_length, args.max_length], "heldout_majority_accuracy": majority},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "models": results,
    }
    if {"serpent-s4d", "s4d"} <= results.keys():
        report["accuracy_difference"] = results["serpent-s4d"]["heldout_accuracy"] - results["s4d"]["heldout_accuracy"]

    print(f"\n{'model':<13} {'params':>8} {'held-out acc':>13} {'s/step':>7}")
    for name, row in results.items():
        print(f"{name:<13} {row['parameters']:>8,} {row['heldout_accuracy']:>13.3f} {row['seconds_per_step']:>7.2f}")
    print(f"{'majority':<13} {'':>8} {majority:>13.3f}")
    if "accuracy_difference" in report:
        print(f"SeRpEnt+S4D - S4D: {report['accuracy_difference']:+.3f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
