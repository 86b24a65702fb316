"""Figures: a run's training curves and the selectivity Δ of every branch on a sample text; comparisons of
runs (held-out loss by position, a quality study, a context-length sweep).

Both use matplotlib's Agg backend (no display needed) and write PNG files.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def plot_training_curves(log_history, path):
    """Train and eval loss against the step (left) and eval top-1 / top-5 accuracy (right)."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [entry for entry in log_history if "eval_loss" in entry]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot(*zip(*train), label="train loss")
    if evals:
        left.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss")
        for key, label in (("eval_top1_accuracy", "top-1"), ("eval_top5_accuracy", "top-5")):
            points = [(e["step"], e[key]) for e in evals if key in e]
            if points:
                right.plot(*zip(*points), "o-", label=f"eval {label} accuracy")
    left.set(xlabel="step", ylabel="cross-entropy (nats / token)", title="Loss")
    right.set(xlabel="step", ylabel="accuracy", title="Next-token accuracy", ylim=(0, None))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_run_comparison(log_histories, path):
    """Several runs on one figure: eval loss (left) and eval top-1 / top-5 accuracy (right) against
    the step, one colour per run, so models trained on the same tokens can be compared at a glance."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, log_history) in enumerate(log_histories.items()):
        colour = f"C{index}"
        evals = [entry for entry in log_history if "eval_loss" in entry]
        steps = [entry["step"] for entry in evals]
        left.plot(steps, [entry["eval_loss"] for entry in evals], "o-", color=colour, label=name)
        right.plot(steps, [entry["eval_top1_accuracy"] for entry in evals], "o-", color=colour, label=f"{name} top-1")
        right.plot(steps, [entry["eval_top5_accuracy"] for entry in evals], "s--", color=colour, label=f"{name} top-5")
    left.set(xlabel="step", ylabel="eval cross-entropy (nats / token)", title="Held-out loss")
    right.set(xlabel="step", ylabel="accuracy", title="Held-out next-token accuracy", ylim=(0, None))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_study(results, path):
    """A quality study: held-out top-1 of every arm, mean ± standard deviation over seeds, at the final and the best
    checkpoint (left), and each arm's held-out loss against the step, averaged over seeds (right)."""
    arms = results["arms"]
    names = list(arms)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    positions = np.arange(len(names))
    for offset, point in ((-0.2, "final"), (0.2, "best")):
        means = [arms[name][point]["top1_accuracy"]["mean"] for name in names]
        errors = [arms[name][point]["top1_accuracy"]["std"] for name in names]
        left.bar(positions + offset, means, 0.4, yerr=errors, capsize=3, label=f"{point} checkpoint")
    low = min(arms[name]["final"]["top1_accuracy"]["mean"] for name in names)
    left.set(ylabel="held-out top-1 accuracy", title="Top-1 (mean ± sd over seeds)", ylim=(max(0.0, low - 0.03), None))
    left.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
    left.legend()
    for index, name in enumerate(names):
        curves = [run["eval_curve"] for run in results["runs"][name]]
        steps = [step for step, _, _ in curves[0]]
        losses = np.mean([[loss for _, loss, _ in curve] for curve in curves], axis=0)
        right.plot(steps, losses, "o-", color=plt.cm.tab20(index % 20), label=name)  # 20 distinct colours
    right.set(xlabel="step", ylabel="held-out cross-entropy (nats / token)", title="Held-out loss (mean over seeds)")
    right.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_loss_by_position(scores, path):
    """{name: training.evaluation.loss_by_position result}: each model's held-out loss against the position in the block."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, score in scores.items():
        axis.plot(score["loss_curve_positions"], score["loss_curve"], label=f"{name} (block {score['block_size']})")
    axis.set(xscale="log", xlabel="position in the block (tokens of context)", ylabel="held-out cross-entropy (nats / token)",
             title="Held-out loss by position")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_context_length(results, path):
    """A context-length sweep (benchmarks/context_length.py): held-out loss against position within the block for
    every block size and arm (left), held-out top-1 against block size (middle), and held-out loss against
    training seconds at each block size (right); means over seeds, error bars one standard deviation."""
    sweep = results["block_sizes"]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    arms = sorted({arm for arms in sweep.values() for arm in arms})
    styles = {block_size: style for block_size, style in zip(sweep, ("-", "--", ":", "-."))}
    for arm_index, arm in enumerate(arms):
        colour = f"C{arm_index}"
        sizes = [block_size for block_size in sweep if arm in sweep[block_size]]
        for block_size in sizes:
            row = sweep[block_size][arm]
            positions = row["runs"][0]["positions"]["loss_curve_positions"]
            label = f"{arm}, block {block_size}"
            left.plot(positions, row["loss_curve"], styles[block_size], color=colour, label=label)
            curves = [run["eval_curve"] for run in row["runs"]]
            steps = np.array([step for step, _, _ in curves[0]], dtype=float)
            seconds = steps / row["runs"][0]["steps"] * row["train_seconds"]["mean"]
            right.plot(seconds, np.mean([[loss for _, loss, _ in curve] for curve in curves], axis=0), "o" + styles[block_size],
                       color=colour, label=label)
        middle.errorbar([float(size) for size in sizes], [sweep[size][arm]["top1"]["mean"] for size in sizes],
                        yerr=[sweep[size][arm]["top1"]["std"] for size in sizes], fmt="o-", color=colour, capsize=3, label=arm)
    left.set(xscale="log", xlabel="position in the block (tokens of context)", ylabel="held-out cross-entropy (nats / token)",
             title="Held-out loss by position (mean over seeds)")
    middle.set(xscale="log", xlabel="block size (tokens; same tokens per step)", ylabel="held-out top-1 accuracy",
               title="Top-1 against context (mean ± sd)")
    right.set(xlabel="training seconds (1 thread)", ylabel="held-out cross-entropy (nats / token)",
              title="Held-out loss against training time")
    for axis in (left, middle, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@torch.no_grad()
def delta_profile(model, tokenizer, text, max_tokens=80):
    """Run a SeRpEnt model on `text`; return tokens, rates, Δ (layers, branches, length) and the
    compressed fraction M / L (layers, branches). None for models without selective resampling."""
    compressed = getattr(model.config, "compressed_branches", None)
    if not compressed:
        return None
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens].to(model.device)
    was_training = model.training
    model.eval()
    output = model(ids, output_deltas=True, use_cache=False)
    model.train(was_training)
    length = ids.shape[1]
    return {
        "tokens": [tokenizer.decode([token]) for token in ids[0].tolist()],
        "rates": list(model.config.compression_rates),
        "compressed_branches": compressed,
        "deltas": output.deltas[:, 0].float().cpu().numpy(),
        "compressed_fraction": (output.compressed_lengths[:, 0].float() / length).cpu().numpy(),
    }


def plot_deltas(profile, path):
    """One panel per resampling branch (κ < 1): Δ per token, one line per layer. A κ = 1 branch has Δ ≡ 1."""
    branches = list(profile["compressed_branches"])
    tokens, deltas = profile["tokens"], profile["deltas"]
    figure, axes = plt.subplots(len(branches), 1, figsize=(max(8, 0.16 * len(tokens)), 2.6 * len(branches)),
                                sharex=True, squeeze=False)
    positions = np.arange(len(tokens))
    for axis, branch in zip(axes[:, 0], branches):
        rate = profile["rates"][branch]
        for layer in range(deltas.shape[0]):
            fraction = profile["compressed_fraction"][layer, branch]
            axis.plot(positions, deltas[layer, branch], marker=".", label=f"layer {layer} (M/L = {fraction:.2f})")
        axis.axhline(rate, color="grey", linestyle="--", linewidth=0.8)
        axis.set(ylabel="Δ", ylim=(0, 1), title=f"branch κ = {rate:g} (Δ ∈ (κ, 1); dashed line: κ)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper right")
    last = axes[-1, 0]
    last.set_xticks(positions)
    last.set_xticklabels([repr(token)[1:-1] for token in tokens], rotation=90, fontsize=6)
    last.set_xlabel("token")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
