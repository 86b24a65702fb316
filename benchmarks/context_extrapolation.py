"""Trained at one context, read at a longer one: held-out loss by position past the training length.

A Mamba trained on blocks of L tokens has never carried its state past L steps, and its loss tends to rise
once a test block runs past L (DeciMamba's observation about Mamba's effective receptive field). A compressed
SeRpEnt branch at rate κ reaches token p after about κ·p samples, so it stays within the sample counts it was
trained on up to about L/κ tokens. If resampling reaches further, SeRpEnt's loss past L rises less than the
equal-size Mamba's. This asks that of models context_length.py already trained (no training here), at a test
block several times their training block.

    python benchmarks/context_extrapolation.py DATA/wikitext-103-v1 --runs_dir runs/context-1024 \
        --trained_block 1024 --test_block 4096 --seeds 1 2 --output runs/context_extrapolation_1024.json

Both models read the same held-out blocks (context_length.py's held-out articles, cut into test-block pieces).
The penalty of a run is its mean loss past the training length minus its mean loss over the last bucket before
it (positions L/2 + 1 .. L): how much worse a token gets once its context is longer than any seen in training.
Writes the JSON and a plot beside it: loss against position, and the first arm's loss minus the second's on the
same tokens (the training length marked in both).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from context_length import held_out_lines, position_scores, run_directory  # noqa: E402
from quality_wikitext import read_articles  # noqa: E402
from seed_statistics import mean_std  # noqa: E402


def buckets_for(trained_block, test_block):
    """Upper ends of the position buckets: two inside the training length (its first and second half), then
    doublings of it up to the test block, so that every bucket past the training length is one the model never
    trained on."""
    buckets = [trained_block // 2, trained_block]
    while buckets[-1] * 2 < test_block:
        buckets.append(buckets[-1] * 2)
    return buckets + [test_block]


def penalty(scores, trained_block):
    """Mean loss over positions past trained_block minus mean loss over trained_block/2 + 1 .. trained_block,
    weighted by tokens."""
    inside = [b for b in scores["buckets"] if b["first"] > trained_block // 2 and b["last"] <= trained_block]
    past = [b for b in scores["buckets"] if b["first"] > trained_block]

    def mean(buckets):
        return sum(b["loss"] * b["tokens"] for b in buckets) / sum(b["tokens"] for b in buckets)

    return mean(past) - mean(inside)


def plot(results, path):
    """Loss against position, one line a seed (left), and the first arm's loss minus the second's on the same
    tokens, mean over seeds (right): the text's own ups and downs, which dominate the left panel, cancel there."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 5))
    arms = list(results["arms"].items())
    for index, (arm, row) in enumerate(arms):
        for number, scores in enumerate(row["runs"].values()):
            left.plot(scores["loss_curve_positions"], scores["loss_curve"], color=f"C{index}", alpha=0.8, linewidth=1,
                      label=None if number else f"{arm} (penalty {row['penalty']['mean']:+.3f} ± "
                                                f"{row['penalty']['std']:.3f})")
    if len(arms) == 2:
        (first, first_row), (second, second_row) = arms
        curves = [[a - b for a, b in zip(run["loss_curve"], other["loss_curve"])]
                  for run, other in zip(first_row["runs"].values(), second_row["runs"].values())]
        positions = next(iter(first_row["runs"].values()))["loss_curve_positions"]
        mean = [sum(column) / len(column) for column in zip(*curves)]
        right.plot(positions, mean, color="C2", label=f"{first} minus {second}, mean over seeds")
        right.axhline(0.0, color="grey", linewidth=1)
        right.axvline(results["trained_block"], color="black", linestyle="--", linewidth=1, label="training length")
        right.set(xscale="log", xlabel="position in the test block (tokens of context)",
                  ylabel="loss difference (nats / token)", title="Loss difference on the same tokens")
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
    left.axvline(results["trained_block"], color="black", linestyle="--", linewidth=1, label="training length")
    left.set(xscale="log", xlabel="position in the test block (tokens of context)",
             ylabel="held-out cross-entropy (nats / token)",
             title=f"Trained on blocks of {results['trained_block']}, read at {results['test_block']} (one line a seed)")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("--runs_dir", required=True, help="context_length.py's --output_dir")
    parser.add_argument("--trained_block", type=int, required=True)
    parser.add_argument("--test_block", type=int, required=True)
    parser.add_argument("--arms", nargs="+", default=["study-serpent-slow", "study-mamba-14L"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--held_out", type=int, default=12, help="as context_length.py's (the same articles)")
    parser.add_argument("--output", required=True, help="the JSON to write (the plot goes beside it, .png)")
    args = parser.parse_args()
    if args.test_block <= args.trained_block:
        parser.error(f"--test_block {args.test_block} must be longer than --trained_block {args.trained_block}")
    return args


def main():
    args = parse()
    data, _ = read_articles(args.data)
    lines = held_out_lines(data, args.held_out)
    buckets = buckets_for(args.trained_block, args.test_block)
    results = {"trained_block": args.trained_block, "test_block": args.test_block, "held_out_articles": args.held_out,
               "buckets_upper": buckets, "arms": {}}
    for arm in args.arms:
        runs = {}
        for seed in args.seeds:
            directory = run_directory(Path(args.runs_dir), args.trained_block, arm, seed)
            if not (directory / "model.safetensors").is_file():
                print(f"no trained model in {directory}; left out")
                continue
            runs[seed] = position_scores(directory, lines, args.test_block, buckets,
                                         cache_name=f"extrapolation_{args.test_block}.json")
            print(f"{arm} seed {seed}: " + ", ".join(f"{b['name']} {b['loss']:.3f}" for b in runs[seed]["buckets"]),
                  flush=True)
        if runs:
            names = [bucket["name"] for bucket in next(iter(runs.values()))["buckets"]]
            results["arms"][arm] = {
                "seeds": list(runs), "blocks": next(iter(runs.values()))["blocks"],
                "penalty": mean_std([penalty(scores, args.trained_block) for scores in runs.values()]),
                "by_position": {name: {key: mean_std([scores["buckets"][i][key] for scores in runs.values()])
                                       for key in ("loss", "top1")} for i, name in enumerate(names)},
                "runs": runs}
            print(f"{arm}: penalty past {args.trained_block} tokens "
                  f"{results['arms'][arm]['penalty']['mean']:+.4f} ± {results['arms'][arm]['penalty']['std']:.4f} nats")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
