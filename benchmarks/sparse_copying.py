"""A mechanism task where information is sparse: selective copying, SeRpEnt against the Mamba of equal size.

Each example is `length` filler tokens among which `content` content tokens sit at random positions,
then a marker, then the content tokens again, in order. The loss and the accuracy count only the
copied tokens (teacher forcing: the i-th copy is predicted from the marker and the copies before it).
A model solves the task only if its state still holds every content token after up to `length`
filler steps. The paper's claim makes a sharp prediction here: θ_Δ can learn a small Δ for filler
and a large one for content, so a compressed branch's SSM sees mostly content, and far fewer steps.

Both models are the same code at the same parameter count (`tiny` and `tiny-mamba` shapes at the
task's vocabulary), trained with SeRpEntTrainer (the compressed branches' learning-rate multiplier
included) on examples generated from the seed; every length and seed is a separate run.

    python benchmarks/sparse_copying.py --lengths 64 256 --seeds 0 1 2     # one content token, 600 steps of 32
    python benchmarks/sparse_copying.py --summarise_only        # JSON and plots of finished runs
    python benchmarks/sparse_copying.py --lengths 64 --seeds 5 --extrapolate_to 256 1024 4096

Extrapolation (`--extrapolate_to`): each trained model (saved in its run's folder) is also tested, without further
training, on examples with longer filler. A model that has learned to skip filler copies as well at any length;
one whose state decays with distance loses the token. This asks the paper's question (does resampling reach further?)
of models that solved the task at a length every arm can learn, instead of training at lengths none of them learns.

A curriculum (`--init_from DIR --init_length N`): every run continues the model an earlier sweep (its output folder
DIR) trained at N filler tokens for the same arm and seed, instead of starting from initialisation:

    python benchmarks/sparse_copying.py --output_dir runs/curriculum --init_from runs/sparse-copying --init_length 128 \
        --lengths 1024 --max_steps 300 --batch_size 8 --seeds 0 --models mamba --extrapolate_to 4096

Writes OUTPUT_DIR/sparse_copying.json and sparse_copying.png (copy accuracy against length, mean ± sd
over seeds, and how many seeds copy at least 90%; for each SeRpEnt arm, Δ of every compressed branch on one
example, content positions marked; M/L per branch), and with --extrapolate_to, sparse_copying_extrapolation.png
(every run's accuracy against test length; solid: solved at its training length).
A finished run (its result.json exists) is not trained again, so an interrupted sweep resumes; lengths missing
from a finished run's extrapolation are tested from its saved model.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import TrainingArguments, default_data_collator, set_seed  # noqa: E402

from seed_statistics import mean_std  # noqa: E402
from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM  # noqa: E402
from serpent_hf.training.trainer import SeRpEntTrainer  # noqa: E402

FILLER, MARKER, FIRST_CONTENT = 0, 1, 2
# Runs either cross the task's sudden drop in loss or stay near chance, so the mean hides how many solved it.
SOLVED = 0.9
IGNORE = -100
# The arms whose θ_Δ is also trained toward each token's unigram surprisal, with this coefficient.
INFORMATION_TERM = {"serpent-skip256-info": 1.0}
# Equal parameter count (within 1%): one SeRpEnt block holds about 3.5 Mamba layers' parameters.
# "mamba-2L" is a control, not a contender: SeRpEnt's depth and width without its compressed branches (a third of
# its parameters). If it copies as well as SeRpEnt, the gain comes from the shallower network, not from resampling.
SERPENT = {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 8, "compression_rates": [1.0, 0.5, 0.25],
           "delta_source": "embedding", "projection_init": "identity"}
# SeRpEnt with the rate term (modeling/rate_loss.py, budget 0.1 of the free range): filler must earn its samples
# (coefficient: --rate_loss_coef).
SERPENT_RATE = {**SERPENT, "rate_loss_coef": 1.0}
MODELS = {
    "serpent": SERPENT,
    "serpent-rate": SERPENT_RATE,
    # Δ lies in [κ, 1], so a κ = 0.25 branch still spends one sample per four filler tokens and cannot skip filler.
    # The skip arms give one branch κ = 1/32 or 1/256 (the rate term holds it near that rate): filler may cost 1/32
    # (1/256) of a sample, so the branch's SSM carries content across 32x (256x) the filler in the same steps.
    # With K = 4 a sample reads only the 4 elements before its emitter, and a content token that emits no sample of
    # its own is never seen; "-k32" widens the window to cover every element between two samples at the floor rate.
    "serpent-skip": {**SERPENT_RATE, "compression_rates": [1.0, 0.25, 0.03125]},
    "serpent-skip256": {**SERPENT_RATE, "compression_rates": [1.0, 0.25, 0.00390625]},
    "serpent-skip-k32": {**SERPENT_RATE, "compression_rates": [1.0, 0.25, 0.03125], "num_neighbors": 32},
    # κ = 1/32 and 1/256 with K = 256: no element is ever out of every sample's window, so θ_Δ need not single out
    # the content token before a branch can read it (the obstacle the skip arms met: a token out of every window has
    # no gradient to raise its Δ). K is one for all branches, and the κ = 0.25 branch would gather M·K ≈ 64·L
    # elements: it gives way to κ = 1/32 (same parameters).
    "serpent-skip256-k256": {**SERPENT_RATE, "compression_rates": [1.0, 0.03125, 0.00390625], "num_neighbors": 256},
    # κ = 1/256 with θ_Δ also taught by the information term (InformationTermTrainer): a diagnosis, not a recipe. It
    # separates what the architecture can do once Δ marks the informative tokens from whether θ_Δ finds them alone.
    "serpent-skip256-info": {**SERPENT_RATE, "compression_rates": [1.0, 0.25, 0.00390625]},
    # κ = 1/256 with θ_Δ starting open (bias 0: Δ halfway up the free range, every element near a sample) instead of
    # near the floor: θ_Δ can then learn from the copy loss alone which elements to keep, while the rate term pulls
    # the rest down. The loss-only counterpart of the information term.
    "serpent-skip256-open": {**SERPENT_RATE, "compression_rates": [1.0, 0.25, 0.00390625], "delta_bias_init": 0.0},
    "mamba": {"hidden_size": 64, "num_hidden_layers": 7, "state_size": 8, "compression_rates": [1.0]},
    "mamba-2L": {"hidden_size": 64, "num_hidden_layers": 2, "state_size": 8, "compression_rates": [1.0]},
}


def information_term(deltas, input_ids, compressed_branches):
    """Mean squared distance between every compressed branch's Δ, as its share of the free range (Δ - κ) / (1 - κ),
    and each token's unigram surprisal in the batch, -log(count / tokens), scaled to [0, 1] by the batch's largest.

    The paper's premise is that Δ measures how much an element carries; this term states it with the cheapest measure
    of information there is, counted from the inputs alone. On this task it is nearly an oracle: filler is almost
    every token (surprisal ~0), each content token is rare (scaled surprisal ~1). deltas (layers, b, branches, l)."""
    counts = torch.bincount(input_ids.flatten()).to(deltas.dtype)
    surprisal = -torch.log(counts[input_ids] / input_ids.numel())
    target = surprisal / surprisal.max().clamp(min=1e-9)  # (b, l)
    index = torch.tensor(list(compressed_branches), device=deltas.device)
    rates = torch.tensor(list(compressed_branches.values()), device=deltas.device, dtype=deltas.dtype)
    share = (deltas.index_select(2, index) - rates.view(1, 1, -1, 1)) / (1.0 - rates.view(1, 1, -1, 1))
    return ((share - target.unsqueeze(1)) ** 2).mean().float()


class InformationTermTrainer(SeRpEntTrainer):
    """SeRpEntTrainer whose training loss adds `coefficient` · information_term (the rate term stays the config's)."""

    def __init__(self, *args, coefficient, **kwargs):
        super().__init__(*args, **kwargs)
        self.coefficient = coefficient

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:  # SeRpEntTrainer asked for Δ in training
            branches = self.accelerator.unwrap_model(model).config.compressed_branches
            term = information_term(outputs.deltas, inputs["input_ids"], branches)
            self._statistics_sums["resampling/information_term"] += float(term.detach())
            loss = loss + self.coefficient * term
        return (loss, outputs) if return_outputs else loss


def make_examples(count, length, content, vocabulary, generator):
    """(count, length + 1 + content) input ids and labels: filler with `content` tokens at random positions,
    a marker, then the content tokens in order; labels are the copies (IGNORE elsewhere)."""
    body = torch.full((count, length), FILLER)
    positions = torch.rand(count, length, generator=generator).argsort(dim=1)[:, :content].sort(dim=1).values
    tokens = torch.randint(FIRST_CONTENT, FIRST_CONTENT + vocabulary, (count, content), generator=generator)
    body.scatter_(1, positions, tokens)
    ids = torch.cat([body, torch.full((count, 1), MARKER), tokens], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, length + 1:] = tokens
    return ids, labels, positions


def build_model(name, vocabulary, seed, rate_loss_coef=None):
    set_seed(seed)
    shape = dict(MODELS[name])
    if rate_loss_coef is not None and "rate_loss_coef" in shape:
        shape["rate_loss_coef"] = rate_loss_coef
    config = SeRpEntConfig(vocab_size=FIRST_CONTENT + vocabulary, pad_token_id=FILLER, bos_token_id=MARKER,
                           eos_token_id=MARKER, **shape)
    return SeRpEntForCausalLM(config)


@torch.no_grad()
def copy_accuracy(model, ids, labels, batch_size):
    """Fraction of copied tokens predicted right (argmax), and of examples with every copy right."""
    model.eval()
    right, whole = [], []
    for start in range(0, len(ids), batch_size):
        batch, targets = ids[start:start + batch_size], labels[start:start + batch_size, 1:]
        predicted = model(input_ids=batch).logits[:, :-1].argmax(-1)
        answer = targets != IGNORE
        correct = (predicted == targets) | ~answer
        right.append((predicted == targets)[answer].float())
        whole.append(correct.all(dim=1).float())
    return float(torch.cat(right).mean()), float(torch.cat(whole).mean())


def test_examples(args, length, seed):
    """Held-out examples of one length, the same for every model (their own seed: no training example)."""
    return make_examples(args.test_examples, length, args.content, args.vocabulary,
                         torch.Generator().manual_seed(10_000 + seed))


def extrapolate(model, args, result, directory):
    """Copy accuracy of a trained model at every length of --extrapolate_to it has not been tested at yet, and M/L
    per compressed branch at the longest; written into result.json as it goes (long lengths take minutes)."""
    tested = result.setdefault("extrapolation", {})
    for length in sorted(set(args.extrapolate_to) - {int(n) for n in tested}):
        started = time.perf_counter()
        ids, labels, positions = test_examples(args, length, result["seed"])
        accuracy, _ = copy_accuracy(model, ids, labels, args.batch_size)
        tested[str(length)] = accuracy
        print(f"  at length {length}: copy accuracy {accuracy:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
        if length == max(args.extrapolate_to) and "example" in result:
            result["example_longest"] = delta_example(model, ids[:1], positions[0])
        (directory / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def initial_model(args, name, seed):
    """A new model of the arm, or with --init_from (a curriculum) the one an earlier sweep trained for this arm and
    seed at --init_length."""
    if not args.init_from:
        return build_model(name, args.vocabulary, seed, args.rate_loss_coef)
    source = Path(args.init_from) / f"length{args.init_length}" / name / f"seed{seed}" / "model"
    if not source.is_dir():
        raise SystemExit(f"--init_from: no trained model of {name}, seed {seed}, at {source}")
    return SeRpEntForCausalLM.from_pretrained(source)


def train_one(args, name, length, seed, directory):
    generator = torch.Generator().manual_seed(seed)
    ids, labels, _ = make_examples(args.max_steps * args.batch_size, length, args.content, args.vocabulary, generator)
    test_ids, test_labels, test_positions = test_examples(args, length, seed)
    model = initial_model(args, name, seed)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    training_args = TrainingArguments(
        output_dir=str(directory), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=args.max_steps // 10,
        weight_decay=0.1, logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, seed=seed,
        disable_tqdm=True)
    trainer_class, extra = SeRpEntTrainer, {}
    if name in INFORMATION_TERM:
        trainer_class, extra = InformationTermTrainer, {"coefficient": INFORMATION_TERM[name]}
    trainer = trainer_class(model=model, args=training_args, train_dataset=dataset,
                            data_collator=default_data_collator,
                            compressed_branch_lr_multiplier=args.compressed_branch_lr_multiplier, **extra)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    accuracy, whole = copy_accuracy(model, test_ids, test_labels, args.batch_size)
    result = {"model": name, "length": length, "seed": seed, "parameters": model.num_parameters(),
              "trained_first_at": args.init_length if args.init_from else None,
              "copy_accuracy": accuracy, "sequence_accuracy": whole, "train_seconds": round(seconds, 1),
              "train_loss": [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]}
    if any(rate < 1 for rate in model.config.compression_rates):
        result["example"] = delta_example(model, test_ids[:1], test_positions[0])
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory / "model")
    (directory / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def delta_example(model, ids, content_positions):
    """Δ of every compressed branch (layer 0 and the last layer) on one example, its content positions, and
    M/L (compressed samples per token) of every layer and branch."""
    out = model(input_ids=ids, output_deltas=True)
    rates = model.config.compression_rates
    length = ids.shape[1]
    deltas = {f"layer{layer}_rate{rate:g}": out.deltas[layer, 0, branch].tolist()
              for layer in (0, len(out.deltas) - 1) for branch, rate in enumerate(rates) if rate < 1}
    m_over_l = {f"layer{layer}_rate{rate:g}": float(out.compressed_lengths[layer][0, branch]) / length
                for layer in range(len(out.deltas)) for branch, rate in enumerate(rates) if rate < 1}
    return {"content_positions": content_positions.tolist(), "deltas": deltas, "M_over_L": m_over_l}


def summarise(results):
    table = {}
    for result in results:
        table.setdefault(result["model"], {}).setdefault(result["length"], []).append(result)
    summary = {}
    for name, by_length in table.items():
        summary[name] = {}
        for length, runs in sorted(by_length.items()):
            values = [run["copy_accuracy"] for run in runs]
            summary[name][length] = {
                "seeds": len(runs), "parameters": runs[0]["parameters"],
                "copy_accuracy": mean_std(values),
                "seeds_solved": sum(value >= SOLVED for value in values),
                "sequence_accuracy": statistics.fmean(run["sequence_accuracy"] for run in runs),
                "train_seconds": statistics.fmean(run["train_seconds"] for run in runs)}
            # How far the runs that learned the task carry it (the others stay near chance at any length); a run still
            # being tested counts at the lengths it has reached.
            solved = [run["extrapolation"] for run in runs if run["copy_accuracy"] >= SOLVED and "extrapolation" in run]
            if solved:
                tested = sorted({test_length for run in solved for test_length in run}, key=int)
                summary[name][length]["extrapolation_of_solved_runs"] = {
                    test_length: {"copy_accuracy": statistics.fmean(values), "of": len(values),
                                  "still_solved": sum(value >= SOLVED for value in values)}
                    for test_length in tested
                    for values in [[run[test_length] for run in solved if test_length in run]]}
            if "example" in runs[0]:
                keys = runs[0]["example"]["M_over_L"]
                summary[name][length]["M_over_L"] = {key: statistics.fmean(run["example"]["M_over_L"][key] for run in runs)
                                                     for key in keys}
    return summary


def plot(summary, results, path):
    """Accuracy against length (left) and, for every model with compressed branches, Δ on one example: its longest
    length, lowest seed (one panel each, so that the arms' Δ compare)."""
    examples = {}
    # Results kept in benchmarks/results/ may hold Δ only as a summary (a long example's Δ is too long to keep).
    drawn = (r for r in results if "deltas" in r.get("example", {}))
    for result in sorted(drawn, key=lambda r: (-r["length"], r["seed"])):
        examples.setdefault(result["model"], result)
    figure, axes = plt.subplots(1, 1 + len(examples), figsize=(7 * (1 + len(examples)), 4.5), squeeze=False)
    left = axes[0, 0]
    for index, (name, by_length) in enumerate(summary.items()):
        lengths = sorted(by_length)
        left.errorbar(lengths, [by_length[n]["copy_accuracy"]["mean"] for n in lengths],
                      yerr=[by_length[n]["copy_accuracy"]["std"] for n in lengths], fmt="o-", capsize=3,
                      color=f"C{index}", label=f"{name} ({by_length[lengths[0]]['parameters']:,} parameters)")
    left.axhline(SOLVED, color="grey", linestyle=":", linewidth=1)
    left.set(xscale="log", xlabel="filler length", ylabel="copied tokens right (held-out)", ylim=(0, 1.02),
             title="Selective copying: accuracy against length (mean ± sd over seeds)")
    left.legend(fontsize=8)
    for right, (name, example) in zip(axes[0, 1:], examples.items()):
        for index, (key, values) in enumerate(example["example"]["deltas"].items()):
            right.plot(values, linewidth=0.8, color=f"C{index + 2}", label=f"Δ {key.replace('_', ', ')}")
        for position in example["example"]["content_positions"]:
            right.axvline(position, color="black", alpha=0.4, linewidth=0.8)
        right.axvline(example["length"], color="black", linestyle="--", linewidth=1, label="marker")
        right.set(yscale="log", xlabel="position (black lines: content tokens)", ylabel="Δ",
                  title=f"{name}: Δ on one example, length {example['length']}, seed {example['seed']}")
        right.legend(fontsize=7)
    for axis in axes[0]:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_extrapolation(results, path):
    """Copy accuracy against test length, one line per run (colour: the arm; solid: the run solved its training
    length, the line's first point; faint: it did not)."""
    names = sorted({result["model"] for result in results})
    figure, axis = plt.subplots(figsize=(8, 5))
    for result in results:
        if "extrapolation" not in result:
            continue
        points = sorted([(result["length"], result["copy_accuracy"])]
                        + [(int(n), value) for n, value in result["extrapolation"].items()])
        solved = result["copy_accuracy"] >= SOLVED
        axis.plot(*zip(*points), "o-" if solved else "o:", color=f"C{names.index(result['model'])}",
                  alpha=0.8 if solved else 0.25, linewidth=1.2 if solved else 0.8)
    for index, name in enumerate(names):
        axis.plot([], [], "o-", color=f"C{index}", label=name)
    axis.axhline(SOLVED, color="grey", linestyle=":", linewidth=1)
    axis.set(xscale="log", xlabel="filler length at test (first point of each line: its training length)",
             ylabel="copied tokens right (held-out)", ylim=(0, 1.02),
             title="Selective copying: trained at one length, tested longer (faint: not solved when trained)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/sparse-copying")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["serpent", "mamba", "mamba-2L"], choices=list(MODELS))
    parser.add_argument("--content", type=int, default=1, help="content tokens per example")
    parser.add_argument("--vocabulary", type=int, default=8, help="distinct content tokens")
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--rate_loss_coef", type=float, default=None,
                        help="the rate term's weight in the arms that have it (default: MODELS' 1.0)")
    parser.add_argument("--compressed_branch_lr_multiplier", type=float, default=0.1,
                        help="learning rate of the branches with κ < 1 relative to --learning_rate (the "
                        "language-model recipe's 0.1 by default; at 1.0 a skip branch learns at full speed)")
    parser.add_argument("--init_from", default=None,
                        help="OUTPUT_DIR of an earlier sweep: every run continues the model that sweep trained for its "
                        "arm and seed at --init_length (a curriculum), instead of starting from initialisation")
    parser.add_argument("--init_length", type=int, default=None, help="the filler length --init_from trained at")
    parser.add_argument("--test_examples", type=int, default=256)
    parser.add_argument("--extrapolate_to", type=int, nargs="*", default=[],
                        help="also test each trained model, without training, at these filler lengths")
    parser.add_argument("--summarise_only", action="store_true")
    args = parser.parse_args()
    if (args.init_from is None) != (args.init_length is None):
        parser.error("--init_from and --init_length go together")
    return args


def main():
    args = parse()
    output_dir = Path(args.output_dir)
    results = []
    for seed in args.seeds:
        for length in args.lengths:
            for name in args.models:
                directory = output_dir / f"length{length}" / name / f"seed{seed}"
                if (directory / "result.json").is_file():
                    result = json.loads((directory / "result.json").read_text())
                elif args.summarise_only:
                    continue
                else:
                    print(f"training {name} at length {length}, seed {seed}", flush=True)
                    result = train_one(args, name, length, seed, directory)
                    print(f"  copy accuracy {result['copy_accuracy']:.3f} in {result['train_seconds']:.0f} s", flush=True)
                if args.extrapolate_to and not args.summarise_only and (directory / "model").is_dir():
                    model = SeRpEntForCausalLM.from_pretrained(directory / "model")
                    result = extrapolate(model, args, result, directory)
                results.append(result)
    summary = summarise(results)
    for name, by_length in summary.items():
        for length, row in by_length.items():
            print(f"{name:8s} length {length:5d}: copy accuracy {row['copy_accuracy']['mean']:.3f} ± "
                  f"{row['copy_accuracy']['std']:.3f}, {row['seeds_solved']} of {row['seeds']} seeds >= {SOLVED}, "
                  f"{row['train_seconds']:.0f} s")
            for test_length, cell in row.get("extrapolation_of_solved_runs", {}).items():
                print(f"    its solved runs at length {test_length}: copy accuracy {cell['copy_accuracy']:.3f}, "
                      f"{cell['still_solved']} of {cell['of']} still >= {SOLVED}")
    output = {"options": vars(args), "summary": summary, "runs": results}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "sparse_copying.json").write_text(json.dumps(output, indent=2) + "\n")
    plot(summary, results, output_dir / "sparse_copying.png")
    if any("extrapolation" in result for result in results):
        plot_extrapolation(results, output_dir / "sparse_copying_extrapolation.png")
    print(f"wrote {output_dir / 'sparse_copying.json'} and its plots")


if __name__ == "__main__":
    main()
