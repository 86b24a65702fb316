"""Quality on held-out WikiText: SeRpEnt arms against Mamba baselines of equal size, trained on the
same tokens with the same seeds, scored by top-1 / top-5 next-token accuracy and perplexity.

Data: the WikiText-103 validation file, 60 articles (DATA/wikitext-103-v1/wiki.valid.tokens, the raw
file of the dataset's wikitext-103-v1 release; DATA is any folder you keep it in). Its
articles are separated by top-level headings " = Title = "; the first 54 train, the last 6 are
held out. Tokenizer: a byte-level BPE of 4,096 entries (the configs' vocab_size) trained on the 54
training articles only. Every run is training/train_lm.py with identical options (steps, batch,
block size, learning-rate schedule, seed); only the model config (and an arm's own options, such
as θ_Δ's learning-rate multiplier) differ. See ARMS below.

    python benchmarks/quality_wikitext.py DATA/wikitext-103-v1 --max_steps 1000   # small vs small-mamba
    python benchmarks/quality_wikitext.py DATA/wikitext-103-v1 --max_steps 200 --eval_steps 100 \
        --seeds 0 1 2 --arms study-mamba-14L study-mamba-4L study-serpent-hidden ...       # the quality study

The training set is small (about 270K tokens): 1,000 steps are about 7.6 epochs and the held-out
loss can rise again before the end, so the report gives the final metrics and those of the
evaluation with the lowest held-out loss along the way. With several seeds it reports the mean
and standard deviation over seeds. A finished run (its eval_results.json exists) is not trained
again, so an interrupted study resumes where it stopped.

Writes OUTPUT_DIR/quality_wikitext.json, OUTPUT_DIR/quality_wikitext.png (top-1 per arm with
error bars, held-out loss against the step) and one training run (model, card, plots) per arm and seed.
"""

import argparse
import json
import math
import statistics
from pathlib import Path

from seed_statistics import mean_std

ROOT = Path(__file__).resolve().parent.parent

from serpent_hf.training import train_lm
from serpent_hf.training.data import split_articles
from serpent_hf.training.plots import plot_study

HELD_OUT = 6

# An arm is a model config (a file in configs/, or a dict written into the run) plus extra train_lm options.
# "serpent" and "mamba" are the shipped `small` and `small-mamba`. The study-* arms are the quality study of
# benchmarks/README.md at hidden size 128 (a quarter of `small`'s compute per token, so that three seeds of
# every arm fit a 2-core machine); every SeRpEnt arm and study-mamba-14L hold 2.1M parameters within 2%,
# except the linear operator's, whose equal-size Mamba is study-mamba-18L.
STUDY = {"model_type": "serpent", "architectures": ["SeRpEntForCausalLM"], "vocab_size": 4096, "hidden_size": 128,
         "state_size": 16}
SERPENT_4L = {**STUDY, "num_hidden_layers": 4, "compression_rates": [1.0, 0.5, 0.25]}
EMBEDDING_IDENTITY = {**SERPENT_4L, "delta_source": "embedding", "projection_init": "identity"}
SHARED_LR = ["--compressed_branch_lr_multiplier", "1"]  # the compressed branches at the shared learning rate
ARMS = {
    "serpent": {"config": "configs/small.json"},
    "mamba": {"config": "configs/small-mamba.json"},
    # `small` as it was before the study (the 0.141 at 400 steps), for a run of the old recipe.
    "serpent-before-study": {"config": {"model_type": "serpent", "architectures": ["SeRpEntForCausalLM"],
                                        "vocab_size": 4096, "hidden_size": 256, "num_hidden_layers": 4,
                                        "state_size": 16, "compression_rates": [1.0, 0.5, 0.25],
                                        "delta_source": "hidden", "projection_init": "random"},
                             "options": ["--compressed_branch_lr_multiplier", "1"]},
    "study-mamba-14L": {"config": {**STUDY, "num_hidden_layers": 14, "compression_rates": [1.0]}},
    "study-mamba-4L": {"config": {**STUDY, "num_hidden_layers": 4, "compression_rates": [1.0]}},
    # Before the study: θ_Δ from the hidden state, a random concat projection, one learning rate for all.
    "study-serpent-hidden": {"config": {**SERPENT_4L, "delta_source": "hidden", "projection_init": "random"},
                             "options": SHARED_LR},
    "study-serpent-embedding": {"config": {**SERPENT_4L, "delta_source": "embedding", "projection_init": "random"},
                                "options": SHARED_LR},
    "study-serpent-identity": {"config": EMBEDDING_IDENTITY, "options": SHARED_LR},
    "study-serpent-identity-lr10": {"config": EMBEDDING_IDENTITY,
                                    "options": SHARED_LR + ["--selectivity_lr_multiplier", "10"]},
    "study-serpent-identity-window4": {"config": {**EMBEDDING_IDENTITY, "delta_window": 4}, "options": SHARED_LR},
    "study-serpent-7L-narrow": {"config": {**EMBEDDING_IDENTITY, "num_hidden_layers": 7, "expand": 1},
                                "options": SHARED_LR},
    # The fix: the compressed branches learn at 0.1x the learning rate (train_lm's default; training/trainer.py).
    "study-serpent-slow": {"config": EMBEDDING_IDENTITY},
    "study-serpent-slow-hidden": {"config": {**EMBEDDING_IDENTITY, "delta_source": "hidden"}},
    "study-serpent-slow-random": {"config": {**EMBEDDING_IDENTITY, "projection_init": "random"}},
    "study-serpent-slow-window4": {"config": {**EMBEDDING_IDENTITY, "delta_window": 4}},
    # Issue 24's rate arm: the fix plus the rate term (modeling/rate_loss.py), which asks each compressed branch to
    # keep its nominal rate κ instead of drifting toward keeping every element.
    "study-serpent-slow-rate": {"config": {**EMBEDDING_IDENTITY, "rate_loss_coef": 1.0}},
    # θ_Δ starting open (Δ halfway up its range at the start, as in the sparse-copying arm that found content tokens
    # from the loss alone), without and with the rate term (that arm's recipe): whether it should be the default.
    "study-serpent-slow-open": {"config": {**EMBEDDING_IDENTITY, "delta_bias_init": 0.0}},
    "study-serpent-slow-open-rate": {"config": {**EMBEDDING_IDENTITY, "delta_bias_init": 0.0, "rate_loss_coef": 1.0}},
    "study-serpent-slow-selectivity-lr10": {"config": EMBEDDING_IDENTITY, "options": ["--selectivity_lr_multiplier", "10"]},
    "study-serpent-slow-7L-narrow": {"config": {**EMBEDDING_IDENTITY, "num_hidden_layers": 7, "expand": 1}},
    # The compression operator: a linear map across channels (one d x d matrix per basis function) against the
    # per-channel gate. With G = 4 basis functions it holds 2.65M parameters, so its equal-size Mamba has 18
    # layers (2.62M); the gate at G = 4 separates the operator from the smaller basis.
    "study-mamba-18L": {"config": {**STUDY, "num_hidden_layers": 18, "compression_rates": [1.0]}},
    "study-serpent-slow-basis4": {"config": {**EMBEDDING_IDENTITY, "num_basis": 4}},
    "study-serpent-slow-linear": {"config": {**EMBEDDING_IDENTITY, "num_basis": 4, "compression_operator": "linear"}},
}


def read_articles(path):
    """The WikiText file at `path` (the wikitext-103-v1 folder or its wiki.valid.tokens) -> (file, its articles)."""
    data = Path(path)
    data = data / "wiki.valid.tokens" if data.is_dir() else data
    if not data.is_file():
        raise ValueError(f"{data} does not exist: give the wikitext-103-v1 folder or its wiki.valid.tokens")
    return data, split_articles(data.read_text(encoding="utf-8").splitlines(keepends=True))


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("--output_dir", default="runs/quality-wikitext")
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--eval_steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--held_out", type=int, default=HELD_OUT, help="how many of the last articles are held out")
    parser.add_argument("--models", "--arms", dest="arms", nargs="+", default=["serpent", "mamba"], choices=list(ARMS))
    parser.add_argument("--baseline", default=None, help="the arm every other is compared with (default: the last "
                        "Mamba arm given)")
    parser.add_argument("--summarise_only", action="store_true", help="skip training; report the runs in --output_dir")
    return parser.parse_args()


def run_dir(output_dir, arm, seed, seeds):
    """One seed keeps the layout of before (OUTPUT_DIR/ARM) unless OUTPUT_DIR/ARM/seedN exists; several get
    OUTPUT_DIR/ARM/seedN."""
    seed_dir = output_dir / arm / f"seed{seed}"
    return seed_dir if len(seeds) > 1 or seed_dir.is_dir() else output_dir / arm


def model_config_path(arm, directory):
    config = ARMS[arm]["config"]
    if isinstance(config, str):
        return ROOT / config
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model_config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def train(args, data, output_dir):
    """One training run per arm and seed, identical options except the model config (and the arm's own options)."""
    for seed in args.seeds:  # seed-major: every arm has a first result early
        for arm in args.arms:
            train_run(args, arm, seed, run_dir(output_dir, arm, seed, args.seeds), data, output_dir / "cache")


def train_run(args, arm, seed, directory, data, cache_dir):
    """train_lm.py on `arm` with the study's recipe (args: block_size, batch_size, max_steps, learning_rate,
    eval_steps, held_out); a run whose eval_results.json exists is skipped."""
    if (directory / "eval_results.json").is_file():
        print(f"{directory} is done; skipping it")
        return
    print(f"training {arm}, seed {seed} -> {directory}", flush=True)
    argv = ["--model_config", str(model_config_path(arm, directory)), "--train_file", str(data),
            "--validation_articles", str(args.held_out), "--train_tokenizer", "4096",
            "--block_size", str(args.block_size), "--output_dir", str(directory),
            "--max_steps", str(args.max_steps),
            "--per_device_train_batch_size", str(args.batch_size), "--per_device_eval_batch_size", str(args.batch_size),
            "--learning_rate", str(args.learning_rate), "--lr_scheduler_type", "cosine",
            "--warmup_steps", str(max(1, args.max_steps // 10)), "--weight_decay", "0.1",
            "--eval_strategy", "steps", "--eval_steps", str(args.eval_steps),
            "--logging_steps", str(min(10, args.max_steps)),
            "--save_strategy", "no", "--seed", str(seed), "--dataloader_drop_last", "true",
            "--use_cpu", "true", "--report_to", "none", "--sample_prompt", "The history of",
            "--cache_dir", str(cache_dir), *ARMS[arm].get("options", [])]
    # The folder already holds model_config.json, and an unfinished run in it starts again from scratch.
    train_lm.main(argv + ["--overwrite_output_dir"])


def train_runtime(log_history):
    """The whole training's seconds: the Trainer's closing entry (the last with train_runtime; runs that count input
    tokens also log a running train_runtime at every logging step)."""
    return next(entry["train_runtime"] for entry in reversed(log_history) if "train_runtime" in entry)


def summarise(directory, batch_size, block_size):
    """Final and best held-out metrics of one finished run, read from what train_lm.py wrote."""
    state = json.loads((directory / "trainer_state.json").read_text())
    final = json.loads((directory / "eval_results.json").read_text())
    card = (directory / "README.md").read_text()
    parameters = int(next(line for line in card.splitlines() if line.startswith("| parameters |"))
                     .split("|")[2].strip().replace(",", ""))
    # the periodic evaluations, or the final one alone when the run was shorter than --eval_steps
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry] or [{**final, "step": state["global_step"]}]
    best = min(evals, key=lambda entry: entry["eval_loss"])
    runtime = train_runtime(state["log_history"])
    resampling = [entry for entry in state["log_history"] if any(key.startswith("resampling/") for key in entry)]

    def metrics(entry):
        return {"top1_accuracy": entry["eval_top1_accuracy"], "top5_accuracy": entry["eval_top5_accuracy"],
                "perplexity": math.exp(entry["eval_loss"]), "loss": entry["eval_loss"]}  # periodic evals log no perplexity

    return {"parameters": parameters, "steps": state["global_step"],
            "tokens_trained": state["global_step"] * batch_size * block_size,
            "epochs": state["log_history"][-1].get("epoch"), "train_seconds": round(runtime, 1),
            "final": metrics(final), "best_eval_step": best["step"], "best": metrics(best),
            "final_train_loss": next((e["loss"] for e in reversed(state["log_history"]) if "loss" in e), None),
            # M/L and Δ's spread per layer and branch over the last logging interval
            "resampling": {key: value for key, value in (resampling[-1] if resampling else {}).items()
                           if key.startswith("resampling/")},
            "eval_curve": [(entry["step"], entry["eval_loss"], entry["eval_top1_accuracy"]) for entry in evals]}


def aggregate(runs):
    """Mean and standard deviation over seeds of every final and best metric."""
    result = {"seeds": len(runs), "parameters": runs[0]["parameters"]}
    for point in ("final", "best"):
        result[point] = {}
        for key in runs[0][point]:
            result[point][key] = mean_std([run[point][key] for run in runs])
    losses = [run["final_train_loss"] for run in runs if run["final_train_loss"] is not None]
    result["final_train_loss"] = statistics.fmean(losses) if losses else float("nan")
    keys = runs[0]["resampling"].keys()
    result["resampling"] = {key: statistics.fmean(run["resampling"][key] for run in runs) for key in keys}
    return result


def report(results):
    print("\n| arm | parameters | seeds | top-1 | top-5 | perplexity | best: top-1 / top-5 / perplexity | train loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results["arms"].items():
        final, best = row["final"], row["best"]

        def cell(point, key, digits):
            return f"{point[key]['mean']:.{digits}f} ± {point[key]['std']:.{digits}f}"

        print(f"| {name} | {row['parameters']:,} | {row['seeds']} | {cell(final, 'top1_accuracy', 4)} | "
              f"{cell(final, 'top5_accuracy', 4)} | {cell(final, 'perplexity', 1)} | {cell(best, 'top1_accuracy', 4)} / "
              f"{cell(best, 'top5_accuracy', 4)} / {cell(best, 'perplexity', 1)} | {row['final_train_loss']:.3f} |")
    baseline = results.get("baseline")
    for name, difference in results.get("minus_baseline", {}).items():
        print(f"{name} - {baseline}: final top-1 {difference['final_top1']:+.4f}, best top-1 {difference['best_top1']:+.4f}")


def compare(arms, baseline):
    """Difference of the seed means of held-out top-1 between each arm and the baseline arm."""
    base = arms[baseline]
    return {name: {"final_top1": row["final"]["top1_accuracy"]["mean"] - base["final"]["top1_accuracy"]["mean"],
                   "best_top1": row["best"]["top1_accuracy"]["mean"] - base["best"]["top1_accuracy"]["mean"]}
            for name, row in arms.items() if name != baseline}


def main():
    args = parse()
    data, articles = read_articles(args.data)
    print(f"{data}: {len(articles)} articles -> {len(articles) - args.held_out} train, the last {args.held_out} held out")
    output_dir = Path(args.output_dir)
    if not args.summarise_only:
        train(args, data, output_dir)
    # Every finished run; with --summarise_only an arm may have fewer seeds than asked (the report counts them).
    finished = {arm: [run_dir(output_dir, arm, seed, args.seeds) for seed in args.seeds] for arm in args.arms}
    finished = {arm: [d for d in dirs if (d / "eval_results.json").is_file()] for arm, dirs in finished.items()}
    runs = {arm: [summarise(d, args.batch_size, args.block_size) for d in dirs] for arm, dirs in finished.items() if dirs}
    tokenizers = {(d / "tokenizer.json").read_bytes() for dirs in finished.values() for d in dirs}
    results = {"data": str(data), "articles": len(articles), "train_articles": len(articles) - args.held_out,
               "eval_articles": args.held_out, "tokenizer": "byte-level BPE, 4096 entries, trained on the train articles",
               "same_tokenizer": len(tokenizers) == 1, "options": vars(args),
               "arms": {arm: aggregate(arm_runs) for arm, arm_runs in runs.items()}, "runs": runs}
    baseline = args.baseline or next((arm for arm in reversed(list(runs)) if "mamba" in arm), None)
    if baseline is not None:
        results["baseline"] = baseline
        results["minus_baseline"] = compare(results["arms"], baseline)
    report(results)
    plot_study(results, output_dir / "quality_wikitext.png")
    (output_dir / "quality_wikitext.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output_dir / 'quality_wikitext.json'} and {output_dir / 'quality_wikitext.png'}")


if __name__ == "__main__":
    main()
