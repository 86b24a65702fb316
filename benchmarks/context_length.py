"""Does resampling pay at long context? SeRpEnt against the Mamba of equal size at several block sizes.

Every run is quality_wikitext.py's recipe (same text, tokenizer, schedule and seeds; only the model
config differs) with the tokens per optimizer step held equal across block sizes: a block of 2,048
tokens trains with batch 1, one of 256 with batch 8. More articles are held out than in the quality
study (12 of 60, the same for every arm) so that blocks of 2,048 tokens give enough evaluation text.

After training, every run is scored again on the held-out blocks by position within the block
(`serpent_hf.training.evaluation.loss_by_position`): a long-context gain shows as lower loss late in
the block, not in the average. Training seconds exclude evaluation (train_runtime minus the
evaluations' runtime); run the script pinned to one core with one thread, so that both models' seconds
compare (`taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/context_length.py ...`).

    python benchmarks/context_length.py DATA/wikitext-103-v1 --block_sizes 256 1024 2048 --seeds 0 1 2
    python benchmarks/context_length.py DATA --summarise_only        # tables, JSON and plots of finished runs
    python benchmarks/context_length.py DATA --block_sizes 256 --arm_steps study-serpent-slow=287 \
        --output_dir runs/equal-time                                 # equal training time (see --arm_steps)
    python benchmarks/context_length.py DATA --seeds 2 ... --earlier_runs results/equal_time_small.json
                                                                     # one more seed, summarised with earlier ones

A finished run (its eval_results.json exists) is not trained again, so an interrupted sweep resumes.
Writes OUTPUT_DIR/context_length.json and context_length.png (held-out loss against position, top-1
against block size, held-out loss against training seconds).
"""

import argparse
import json
import statistics
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict

from quality_wikitext import ARMS, read_articles, summarise, train_run
from seed_statistics import mean_std
from serpent_hf.training.data import group_into_blocks, hold_out_articles, load_tokenizer
from serpent_hf.training.evaluation import POSITION_BUCKETS, loss_by_position
from serpent_hf.training.models import load_checkpoint
from serpent_hf.training.plots import plot_context_length


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("--output_dir", default="runs/context-length")
    parser.add_argument("--block_sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--tokens_per_step", type=int, default=2048, help="block size x batch size of every run")
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--held_out", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["study-serpent-slow", "study-mamba-14L"], choices=list(ARMS))
    parser.add_argument("--buckets", type=int, nargs="+", default=list(POSITION_BUCKETS),
                        help="upper ends of the position buckets (1-based, inclusive)")
    parser.add_argument("--arm_steps", nargs="+", default=[], metavar="ARM=STEPS",
                        help="train ARM for STEPS steps instead of --max_steps (equal training time: give the faster "
                             "model the steps that take the slower one's --max_steps seconds)")
    parser.add_argument("--summarise_only", action="store_true", help="skip training; report the finished runs")
    parser.add_argument("--earlier_runs", nargs="+", default=[], metavar="JSON",
                        help="context_length.json of earlier sweeps (other seeds, run folders possibly gone): their "
                             "runs of the same block sizes and arms are summarised with this sweep's")
    args = parser.parse_args()
    try:
        args.arm_steps = {arm: int(steps) for arm, steps in (item.split("=") for item in args.arm_steps)}
    except ValueError:
        parser.error(f"--arm_steps takes ARM=STEPS items, got {args.arm_steps}")
    for block_size in args.block_sizes:
        if args.tokens_per_step % block_size:
            parser.error(f"--tokens_per_step {args.tokens_per_step} is not a multiple of block size {block_size}")
    return args


def run_options(args, block_size, arm):
    """quality_wikitext's options for one block size and arm: batch = tokens_per_step / block_size."""
    return argparse.Namespace(block_size=block_size, batch_size=args.tokens_per_step // block_size,
                              max_steps=args.arm_steps.get(arm, args.max_steps), learning_rate=args.learning_rate,
                              eval_steps=args.eval_steps, held_out=args.held_out)


def run_directory(output_dir, block_size, arm, seed):
    return output_dir / f"block{block_size}" / arm / f"seed{seed}"


def held_out_lines(data, held_out):
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    return hold_out_articles(lines, held_out)[1]


def held_out_blocks(lines, tokenizer, block_size):
    """The blocks the Trainer evaluated: the held-out lines tokenised, concatenated and cut as train_lm cuts them."""
    validation = DatasetDict(validation=Dataset.from_dict({"text": lines}))
    return torch.tensor(group_into_blocks(validation, tokenizer, block_size)["validation"]["input_ids"])


def position_scores(directory, lines, block_size, buckets, cache_name="position_eval.json"):
    """loss_by_position of the run in `directory` on the held-out lines cut into blocks of block_size, cached in
    cache_name beside it."""
    cache = directory / cache_name
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["buckets_upper"] == list(buckets) and cached["block_size"] == block_size:
            return cached
    model, tokenizer = load_checkpoint(str(directory)), load_tokenizer(str(directory))
    scores = loss_by_position(model, held_out_blocks(lines, tokenizer, block_size), buckets)
    cache.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def training_seconds(directory):
    """Seconds spent training (train_runtime minus the periodic evaluations), from trainer_state.json."""
    history = json.loads((directory / "trainer_state.json").read_text())["log_history"]
    # The Trainer's closing entry is the last with train_runtime (runs that count input tokens also log a running
    # one at every logging step); the evaluations during training come before it, the final one after it.
    last = max(i for i, entry in enumerate(history) if "train_runtime" in entry)
    evaluations = sum(entry["eval_runtime"] for entry in history[:last] if "eval_runtime" in entry)
    return history[last]["train_runtime"] - evaluations


def flops_per_token(directory, block_size):
    """Forward + backward FLOPs per token of one block, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model = load_checkpoint(str(directory))
    ids = torch.randint(0, model.config.vocab_size, (1, block_size))
    with FlopCounterMode(display=False) as counter:
        model(ids, labels=ids).loss.backward()
    return counter.get_total_flops() / block_size


def earlier_runs(paths):
    """{(block size, arm): (runs, FLOPs per token)} of earlier sweeps' context_length.json files."""
    found = {}
    for path in paths:
        for block_size, arms in json.loads(Path(path).read_text())["block_sizes"].items():
            for arm, row in arms.items():
                runs, _ = found.get((int(block_size), arm), ([], None))
                found[int(block_size), arm] = (runs + row["runs"], row["flops_per_token"])
    return found


def summarise_block(args, output_dir, block_size, text, flops, earlier):
    """Per arm: the quality study's summary of every finished seed (and of the earlier sweeps' runs), plus position
    scores, seconds and FLOPs."""
    arms = {}
    for arm in args.arms:
        finished = {seed: run_directory(output_dir, block_size, arm, seed) for seed in args.seeds}
        finished = {seed: d for seed, d in finished.items() if (d / "eval_results.json").is_file()}
        runs, earlier_flops = earlier.get((block_size, arm), ([], None))
        runs = list(runs)
        if not (finished or runs):
            continue
        options = run_options(args, block_size, arm)
        for seed, directory in finished.items():
            run = summarise(directory, options.batch_size, block_size)
            run["seed"] = seed
            run["train_seconds"] = round(training_seconds(directory), 1)
            run["positions"] = position_scores(directory, text, block_size, args.buckets)
            runs.append(run)
        seeds = [run["seed"] for run in runs if "seed" in run]
        if len(seeds) != len(set(seeds)):
            raise ValueError(f"--earlier_runs holds a seed of this sweep again ({arm}, block {block_size}): {seeds}")
        if arm not in flops:
            flops[arm] = flops_per_token(next(iter(finished.values())), block_size) if finished else earlier_flops
        buckets = [bucket["name"] for bucket in runs[0]["positions"]["buckets"]]
        arms[arm] = {
            "seeds": len(runs), "parameters": runs[0]["parameters"], "flops_per_token": flops[arm],
            "top1": mean_std([run["final"]["top1_accuracy"] for run in runs]),
            "top5": mean_std([run["final"]["top5_accuracy"] for run in runs]),
            "perplexity": mean_std([run["final"]["perplexity"] for run in runs]),
            "loss": mean_std([run["final"]["loss"] for run in runs]),
            "steps": runs[0]["steps"], "train_seconds": mean_std([run["train_seconds"] for run in runs]),
            "by_position": {name: {key: mean_std([run["positions"]["buckets"][i][key] for run in runs])
                                   for key in ("loss", "top1")} for i, name in enumerate(buckets)},
            "loss_curve": [statistics.fmean(run["positions"]["loss_curve"][i] for run in runs)
                           for i in range(len(runs[0]["positions"]["loss_curve"]))],
            "resampling": {key: statistics.fmean(run["resampling"][key] for run in runs)
                           for key in runs[0]["resampling"]},
            "runs": runs,
        }
    return arms


def report(results):
    for block_size, arms in results["block_sizes"].items():
        print(f"\nblock {block_size}")
        print("| arm | seeds | top-1 | top-5 | perplexity | train s | " +
              " | ".join(f"loss {name}" for name in next(iter(arms.values()))["by_position"]) + " |")
        for arm, row in arms.items():
            print(f"| {arm} | {row['seeds']} | {row['top1']['mean']:.4f} ± {row['top1']['std']:.4f} | "
                  f"{row['top5']['mean']:.4f} ± {row['top5']['std']:.4f} | {row['perplexity']['mean']:.1f} | "
                  f"{row['train_seconds']['mean']:.0f} | " +
                  " | ".join(f"{cell['loss']['mean']:.3f}" for cell in row["by_position"].values()) + " |")


def main():
    args = parse()
    data, articles = read_articles(args.data)
    output_dir = Path(args.output_dir)
    if not args.summarise_only:
        for seed in args.seeds:  # seed-major: every block size and arm has a first result early
            for block_size in args.block_sizes:
                for arm in args.arms:
                    directory = run_directory(output_dir, block_size, arm, seed)
                    train_run(run_options(args, block_size, arm), arm, seed, directory, data, output_dir / "cache")
    text = held_out_lines(data, args.held_out)
    flops, earlier = {}, earlier_runs(args.earlier_runs)
    results = {"data": str(data), "articles": len(articles), "held_out_articles": args.held_out,
               "options": vars(args), "block_sizes": {}}
    for block_size in args.block_sizes:
        arms = summarise_block(args, output_dir, block_size, text, flops, earlier)
        if arms:
            results["block_sizes"][block_size] = arms
        flops.clear()  # FLOPs per token depend on the block size only through the scan; count each
    report(results)
    plot_context_length(results, output_dir / "context_length.png")
    (output_dir / "context_length.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output_dir / 'context_length.json'} and {output_dir / 'context_length.png'}")


if __name__ == "__main__":
    main()
