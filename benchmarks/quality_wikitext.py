"""Quality on held-out WikiText: SeRpEnt `small` vs its Mamba baseline `small-mamba`, trained on
the same tokens with the same seed, scored by top-1 / top-5 next-token accuracy and perplexity.

Data: the WikiText-103 validation file (60 articles), split as ../shared/data/README.md says:
articles are separated by top-level headings " = Title = "; the first 54 train, the last 6 are
held out. Tokenizer: a byte-level BPE of 4,096 entries (the small configs' vocab_size) trained on
the 54 training articles only. Both models run training/train_lm.py with identical options
(steps, batch, block size, learning-rate schedule, seed); only --model_config differs. The two
configs have equal parameter counts within 1% (configs/small*.json).

    python benchmarks/quality_wikitext.py ../shared/data/wikitext-103-v1 --max_steps 1000

The training set is small (about 270K tokens), so 1,000 steps are about 7.6 epochs and the
held-out loss can rise again before the end; the report gives the final metrics and those of the evaluation
with the lowest held-out loss along the way (same schedule for both models).

Writes OUTPUT_DIR/quality_wikitext.json, OUTPUT_DIR/quality_wikitext.png (held-out loss and
accuracy of both models against the step) and one training run (model, card, plots) per model.
"""

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from serpent_hf.training import train_lm
from serpent_hf.training.data import split_articles
from serpent_hf.training.plots import plot_run_comparison

MODELS = {"serpent": "configs/small.json", "mamba": "configs/small-mamba.json"}
HELD_OUT = 6


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("--output_dir", default="runs/quality-wikitext")
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--eval_steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--summarise_only", action="store_true", help="skip training; report the runs in --output_dir")
    return parser.parse_args()


def train(args, data, output_dir):
    """One training run per model, identical options except --model_config."""
    for name in args.models:
        argv = ["--model_config", str(ROOT / MODELS[name]), "--train_file", str(data),
                "--validation_articles", str(HELD_OUT), "--train_tokenizer", "4096",
                "--block_size", str(args.block_size), "--output_dir", str(output_dir / name),
                "--max_steps", str(args.max_steps),
                "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
                "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "cosine",
                "--warmup_steps", str(max(1, args.max_steps // 10)), "--weight_decay", "0.1",
                "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps), "--logging_steps", "10",
                "--save_strategy", "no", "--seed", str(args.seed), "--dataloader_drop_last", "true",
                "--use_cpu", "true", "--report_to", "none", "--sample_prompt", "The history of",
                "--cache_dir", str(output_dir / "cache")]
        train_lm.main(argv)


def summarise(run_dir, batch_size, block_size):
    """Final and best held-out metrics of one finished run, read from what train_lm.py wrote."""
    state = json.loads((run_dir / "trainer_state.json").read_text())
    final = json.loads((run_dir / "eval_results.json").read_text())
    card = (run_dir / "README.md").read_text()
    parameters = int(next(line for line in card.splitlines() if line.startswith("| parameters |"))
                     .split("|")[2].strip().replace(",", ""))
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    best = min(evals, key=lambda entry: entry["eval_loss"])
    runtime = next(entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry)

    def metrics(entry):
        return {"top1_accuracy": entry["eval_top1_accuracy"], "top5_accuracy": entry["eval_top5_accuracy"],
                "perplexity": math.exp(entry["eval_loss"]), "loss": entry["eval_loss"]}  # periodic evals log no perplexity

    return {"parameters": parameters, "steps": state["global_step"],
            "tokens_trained": state["global_step"] * batch_size * block_size,
            "epochs": state["log_history"][-1].get("epoch"), "train_seconds": round(runtime, 1),
            "final": metrics(final), "best_eval_step": best["step"], "best": metrics(best)}


def report(results):
    rows = results["models"]
    print("\n| model | parameters | top-1 | top-5 | perplexity | best step: top-1 / top-5 / perplexity | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        final, best = row["final"], row["best"]
        print(f"| {name} | {row['parameters']:,} | {final['top1_accuracy']:.4f} | {final['top5_accuracy']:.4f} | "
              f"{final['perplexity']:.1f} | {row['best_eval_step']}: {best['top1_accuracy']:.4f} / "
              f"{best['top5_accuracy']:.4f} / {best['perplexity']:.1f} | {row['train_seconds']:.0f} |")
    for key, difference in results.get("serpent_minus_mamba", {}).items():
        print(f"SeRpEnt - Mamba ({key}): top-1 {difference['top1_accuracy']:+.4f}, "
              f"top-5 {difference['top5_accuracy']:+.4f}, perplexity ratio {difference['perplexity_ratio']:.3f}")


def main():
    args = parse()
    data = Path(args.data)
    data = data / "wiki.valid.tokens" if data.is_dir() else data
    if not data.is_file():
        raise ValueError(f"{data} does not exist: give the wikitext-103-v1 folder or its wiki.valid.tokens")
    articles = split_articles(data.read_text(encoding="utf-8").splitlines(keepends=True))
    print(f"{data}: {len(articles)} articles -> {len(articles) - HELD_OUT} train, the last {HELD_OUT} held out")
    output_dir = Path(args.output_dir)
    if not args.summarise_only:
        train(args, data, output_dir)
    results = {"data": str(data), "articles": len(articles), "train_articles": len(articles) - HELD_OUT,
               "eval_articles": HELD_OUT, "tokenizer": "byte-level BPE, 4096 entries, trained on the train articles",
               "options": vars(args),
               "models": {name: summarise(output_dir / name, args.batch_size, args.block_size) for name in args.models}}
    if {"serpent", "mamba"} <= set(results["models"]):
        serpent, mamba = results["models"]["serpent"], results["models"]["mamba"]
        tokenizers = [(output_dir / name / "tokenizer.json").read_bytes() for name in ("serpent", "mamba")]
        results["same_tokenizer"] = tokenizers[0] == tokenizers[1]
        results["serpent_minus_mamba"] = {
            key: {"top1_accuracy": serpent[key]["top1_accuracy"] - mamba[key]["top1_accuracy"],
                  "top5_accuracy": serpent[key]["top5_accuracy"] - mamba[key]["top5_accuracy"],
                  "perplexity_ratio": serpent[key]["perplexity"] / mamba[key]["perplexity"]}
            for key in ("final", "best")
        }
    report(results)
    histories = {name: json.loads((output_dir / name / "trainer_state.json").read_text())["log_history"]
                 for name in results["models"]}
    plot_run_comparison(histories, output_dir / "quality_wikitext.png")
    (output_dir / "quality_wikitext.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output_dir / 'quality_wikitext.json'} and {output_dir / 'quality_wikitext.png'}")


if __name__ == "__main__":
    main()
