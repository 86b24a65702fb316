"""Does θ_Δ measure information? Δ of trained SeRpEnt runs against how much each held-out token carries.

The paper's premise is that Δ grows with an element's information content, so that a compressed branch spends
its samples on informative elements. This script reads trained WikiText runs (context_length.py's) and sets Δ of
every compressed branch at every held-out token against two measures of what the token carries:

    unigram surprisal     -log p(token), p from the token counts of the training articles (add-one smoothed)
    contextual surprisal  -log p(token | the tokens before it) under a reference model trained on the same text
                          (the equal-size Mamba run), the information the token adds given its past

and reports, per layer and compressed branch, the Spearman rank correlation of Δ with each (mean ± sd over the
runs given), Δ's mean in each decile of contextual surprisal, and M/L. A positive correlation is the paper's
picture; zero says Δ is blind to it; negative says the branch keeps the predictable tokens.

    python benchmarks/delta_information.py DATA/wikitext-103-v1 --runs runs/context-small/block2048/serpent/seed* \
        --reference runs/context-small/block2048/mamba/seed0 --output_dir runs/delta-information

The held-out text and blocks are those the runs were evaluated on (the last --held_out articles, cut into blocks
of the runs' training size, which they must share). Writes OUTPUT_DIR/delta_information.json and
delta_information.png (ρ of every branch of every run; Δ against surprisal decile, one line per run and layer).
"""

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from context_length import held_out_blocks  # noqa: E402
from quality_wikitext import read_articles  # noqa: E402
from seed_statistics import mean_std  # noqa: E402
from serpent_hf.training.data import hold_out_articles, load_tokenizer  # noqa: E402
from serpent_hf.training.models import load_checkpoint  # noqa: E402

DECILES = 10


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("--runs", nargs="+", required=True, help="trained SeRpEnt runs (output folders)")
    parser.add_argument("--reference", required=True,
                        help="a run with the same tokenizer, whose loss on the same blocks is the contextual surprisal "
                             "(the equal-size Mamba)")
    parser.add_argument("--held_out", type=int, default=12, help="held-out articles, as the runs were trained with")
    parser.add_argument("--output_dir", default="runs/delta-information")
    return parser.parse_args()


def average_ranks(values):
    """values (n,) -> ranks 1..n (float64), tied values sharing the mean of their ranks."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # the rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2).double()[inverse]


def spearman(x, y):
    """Spearman's rank correlation of x and y (n,): Pearson's correlation of their average ranks."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def block_size_of(run):
    return json.loads((Path(run) / "train_results.json").read_text())["train_block_size"]


def unigram_surprisal(training_lines, tokenizer):
    """-log p(id) for every id of the vocabulary, from the training text's counts (add-one smoothed)."""
    counts = Counter()
    for ids in tokenizer(training_lines)["input_ids"]:
        counts.update(ids)
    table = torch.ones(len(tokenizer), dtype=torch.float64)
    for token, count in counts.items():
        table[token] += count
    return -torch.log(table / table.sum())


@torch.no_grad()
def contextual_surprisal(model, blocks):
    """(blocks, l - 1): -log p(x_t | x_<t) of every token after the first of its block."""
    rows = []
    for block in blocks:
        logits = model(block.unsqueeze(0)).logits[0, :-1].float()
        rows.append(F.cross_entropy(logits, block[1:], reduction="none").double())
    return torch.stack(rows)


@torch.no_grad()
def deltas_of(model, blocks):
    """(layers, compressed branches, blocks, l - 1): Δ of every compressed branch at every token after the first."""
    index = torch.tensor(list(model.config.compressed_branches))
    rows = [model(block.unsqueeze(0), output_deltas=True).deltas[:, 0].index_select(1, index)[..., 1:]
            for block in blocks]
    return torch.stack(rows, dim=2)


def analyse_run(run, blocks, unigram, contextual):
    model = load_checkpoint(run).eval()
    deltas = deltas_of(model, blocks)
    tokens = blocks[:, 1:].reshape(-1)
    context = contextual.reshape(-1)
    deciles = torch.bucketize(context, torch.quantile(context, torch.linspace(0, 1, DECILES + 1)[1:-1].double()))
    branches = []
    for layer in range(deltas.shape[0]):
        for column, rate in enumerate(model.config.compressed_branches.values()):
            delta = deltas[layer, column].reshape(-1)
            branches.append({
                "layer": layer, "rate": rate, "M_over_L": float(delta.mean()),
                "spearman_unigram": spearman(delta, unigram[tokens]),
                "spearman_contextual": spearman(delta, context),
                "delta_by_contextual_decile": [float(delta[deciles == d].mean()) for d in range(DECILES)],
            })
    return {"run": str(run), "branches": branches}


def summarise(runs):
    """Per (layer, κ): every measure as mean ± sd over the runs."""
    rows = []
    for position, first in enumerate(runs[0]["branches"]):
        cells = [run["branches"][position] for run in runs]
        rows.append({
            "layer": first["layer"], "rate": first["rate"],
            **{key: mean_std([cell[key] for cell in cells]) for key in ("M_over_L", "spearman_unigram",
                                                                          "spearman_contextual")},
            "delta_by_contextual_decile": [statistics.fmean(cell["delta_by_contextual_decile"][d] for cell in cells)
                                           for d in range(DECILES)],
        })
    return rows


def plot(runs, path):
    """Left: ρ(Δ, surprisal) of every branch, one dot per run (a mean over runs would hide opposite signs). Then one
    panel per κ: Δ's excess over κ by decile of contextual surprisal, one line per run and layer."""
    branches = runs[0]["branches"]
    rates = sorted({branch["rate"] for branch in branches}, reverse=True)
    figure, axes = plt.subplots(1, 1 + len(rates), figsize=(5.5 * (1 + len(rates)), 4.2), squeeze=False)
    axis = axes[0][0]
    for offset, (key, label) in enumerate((("spearman_contextual", "contextual"), ("spearman_unigram", "unigram"))):
        xs = [position + (offset - 0.5) * 0.25 for run in runs for position in range(len(branches))]
        ys = [branch[key] for run in runs for branch in run["branches"]]
        axis.scatter(xs, ys, s=18, label=f"ρ(Δ, {label} surprisal)")
    axis.axhline(0.0, color="gray", linewidth=0.8)
    axis.set_xticks(range(len(branches)), [f"L{b['layer']} κ{b['rate']:g}" for b in branches], rotation=60,
                    fontsize=8)
    axis.set_ylim(-1, 1)
    axis.set_title(f"Spearman ρ per branch, {len(runs)} runs")
    axis.legend(fontsize=8)
    for axis, rate in zip(axes[0][1:], rates):
        for number, run in enumerate(runs):
            for branch in (branch for branch in run["branches"] if branch["rate"] == rate):
                excess = [(value - rate) / (1 - rate) for value in branch["delta_by_contextual_decile"]]
                axis.plot(range(1, DECILES + 1), excess, color=f"C{branch['layer']}", linewidth=1,
                          linestyle=("-", "--", ":", "-.")[number % 4],
                          label=f"layer {branch['layer']}" if number == 0 else None)
        axis.set_title(f"κ = {rate:g}: Δ against how surprising the token is")
        axis.set_xlabel("decile of contextual surprisal (1: most predictable)")
        axis.set_ylabel("(Δ - κ) / (1 - κ), mean (one line a run)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    args = parse()
    data, articles = read_articles(args.data)
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    training_lines, held_out = hold_out_articles(lines, args.held_out)
    block_size = block_size_of(args.runs[0])
    tokenizer = load_tokenizer(args.reference)
    blocks = held_out_blocks(held_out, tokenizer, block_size)
    for run in args.runs:  # every run must read the same tokens as the reference, in blocks of the same size
        if block_size_of(run) != block_size or not torch.equal(held_out_blocks(held_out, load_tokenizer(run),
                                                                                block_size), blocks):
            raise SystemExit(f"{run} was trained on blocks of another size or with another tokenizer than "
                             f"{args.runs[0]} and {args.reference}")
    unigram = unigram_surprisal(training_lines, tokenizer)
    contextual = contextual_surprisal(load_checkpoint(args.reference).eval(), blocks)
    runs = []
    for run in args.runs:
        runs.append(analyse_run(run, blocks, unigram, contextual))
        print(f"{run}: " + ", ".join(f"layer {b['layer']} κ {b['rate']:g} ρ {b['spearman_contextual']:+.3f}"
                                     for b in runs[-1]["branches"]), flush=True)
    summary = summarise(runs)
    correlations = [branch["spearman_contextual"] for run in runs for branch in run["branches"]]
    # A branch "selects" when its Δ ranks the tokens much as their surprisal does, either way round.
    selective = {"threshold": 0.3, "keep_surprising": sum(r > 0.3 for r in correlations),
                 "keep_predictable": sum(r < -0.3 for r in correlations), "branches": len(correlations)}
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {"data": str(data), "articles": len(articles), "held_out_articles": args.held_out,
               "block_size": block_size, "blocks": len(blocks), "reference": args.reference,
               "reference_loss": float(contextual.mean()), "selective_branches": selective, "summary": summary,
               "runs": runs}
    (output_dir / "delta_information.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(runs, output_dir / "delta_information.png")
    print("| layer | κ | M/L | ρ(Δ, unigram surprisal) | ρ(Δ, contextual surprisal) |")
    for row in summary:
        print(f"| {row['layer']} | {row['rate']:g} | {row['M_over_L']['mean']:.3f} | "
              f"{row['spearman_unigram']['mean']:+.3f} ± {row['spearman_unigram']['std']:.3f} | "
              f"{row['spearman_contextual']['mean']:+.3f} ± {row['spearman_contextual']['std']:.3f} |")
    print(f"branches with |ρ(Δ, contextual surprisal)| > 0.3: {selective['keep_surprising']} keep the surprising "
          f"tokens, {selective['keep_predictable']} the predictable ones, of {selective['branches']}")
    print(f"wrote {output_dir / 'delta_information.json'} and {output_dir / 'delta_information.png'}")


if __name__ == "__main__":
    main()
