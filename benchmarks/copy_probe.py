"""Which branches hold the content token? A linear probe of every branch's output at the marker (selective copying).

A model that fails sparse_copying.py's task fails in one of two places: its state has lost the content token by the
marker, or it still holds it and the readout (concat projection, later layers, LM head) never learned to use it.
A linear probe tells them apart. Each branch's output at the marker position is read on examples of one filler
length; a logistic regression trained on 512 of them predicts the content token of 256 others. Chance is
1 / vocabulary; a probe far above chance means the token is there, within reach of a linear readout.

    python benchmarks/copy_probe.py --length 1024 --output runs/copy_probe.json \\
        --models runs/sparse-info-1024/length1024/serpent-skip256-info/seed0/model untrained:serpent-skip256 \\
        runs/sparse-mamba-1024/length1024/mamba/seed1/model untrained:mamba

A model is a saved model folder or `untrained:ARM` (an arm of sparse_copying.py at initialisation, seed 0: what the
architecture holds before any training). Writes OUTPUT (JSON: the probe's accuracy, and Δ of each content token in
every compressed branch) and OUTPUT with .png (accuracy per layer and branch).
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sparse_copying  # noqa: E402
from serpent_hf import SeRpEntForCausalLM  # noqa: E402

TRAIN, HELD_OUT = 512, 256


def label(name):
    """A run folder's arm, length and seed (length1024/mamba/seed1), not where it lies on this machine."""
    parts = Path(name).parts
    return "/".join(parts[-4:-1]) if not name.startswith("untrained:") and len(parts) >= 4 else name


def load(name, vocabulary):
    if name.startswith("untrained:"):
        return sparse_copying.build_model(name.split(":", 1)[1], vocabulary, seed=0)
    return SeRpEntForCausalLM.from_pretrained(name)


@torch.no_grad()
def branch_outputs_at_marker(model, ids, length, batch_size):
    """{"layer{i}_rate{κ}": (examples, d)}: every branch's output at the marker position."""
    outputs, hooks = {}, []
    for index, layer in enumerate(model.model.layers):
        for branch in layer.branches:
            key = f"layer{index}_rate{branch.compression_rate:g}"
            hooks.append(branch.register_forward_hook(
                lambda module, args, result, key=key: outputs.setdefault(key, []).append(result.output[:, length])))
    model.eval()
    for start in range(0, len(ids), batch_size):
        model(input_ids=ids[start:start + batch_size])
    for hook in hooks:
        hook.remove()
    return {key: torch.cat(chunks) for key, chunks in outputs.items()}


@torch.no_grad()
def content_token_deltas(model, vocabulary):
    """{"layer{i}_rate{κ}": [Δ of each content token]} for every compressed branch: Δ of each of the `vocabulary`
    content tokens read after filler (whether θ_Δ singles out every content token, not only one example's)."""
    ids = torch.tensor([[sparse_copying.FILLER] * 4 + list(range(sparse_copying.FIRST_CONTENT,
                                                                  sparse_copying.FIRST_CONTENT + vocabulary))])
    model.eval()
    deltas = model(input_ids=ids, output_deltas=True).deltas[:, 0, :, 4:]  # (layers, branches, vocabulary)
    return {f"layer{layer}_rate{rate:g}": [round(value, 4) for value in deltas[layer, branch].tolist()]
            for layer in range(deltas.shape[0]) for branch, rate in enumerate(model.config.compression_rates)
            if rate < 1}


def probe_accuracy(features, labels, classes):
    """Held-out accuracy of an L2-regularised logistic regression trained on the first TRAIN rows."""
    features = features.double()
    mean, spread = features[:TRAIN].mean(0), features[:TRAIN].std(0) + 1e-6
    features = (features - mean) / spread  # branches differ in scale by orders of magnitude
    weight = torch.zeros(features.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features[:TRAIN] @ weight + bias, labels[:TRAIN])
        loss = loss + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((features[TRAIN:] @ weight + bias).argmax(-1) == labels[TRAIN:]).double().mean())


def plot(results, chance, path):
    figure, axis = plt.subplots(figsize=(max(8, 0.5 * sum(len(r) for r in results.values())), 4.5))
    position, ticks, names = 0, [], []
    for index, (model, branches) in enumerate(results.items()):
        for key, accuracy in branches.items():
            axis.bar(position, accuracy, color=f"C{index}")
            ticks.append(position)
            names.append(key.replace("_rate", "\nκ="))
            position += 1
        axis.bar(position, 0, label=model)  # a legend entry per model
        position += 1
    axis.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    axis.set_xticks(ticks, names, fontsize=6, rotation=90)
    axis.set(ylabel="content token from the branch's output (held-out)", ylim=(0, 1),
             title="Which branches hold the content token at the marker (linear probe)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="saved model folders or untrained:ARM")
    parser.add_argument("--length", type=int, default=1024, help="filler tokens per example")
    parser.add_argument("--vocabulary", type=int, default=8, help="distinct content tokens (as in training)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--output", default="runs/copy_probe.json")
    args = parser.parse_args()
    ids, _, _ = sparse_copying.make_examples(TRAIN + HELD_OUT, args.length, 1, args.vocabulary,
                                             torch.Generator().manual_seed(20_000))
    labels = ids[:, args.length + 1] - sparse_copying.FIRST_CONTENT  # the one content token, copied after the marker
    results, content_deltas = {}, {}
    for name in args.models:
        model, run = load(name, args.vocabulary), label(name)
        content_deltas[run] = content_token_deltas(model, args.vocabulary)
        features = branch_outputs_at_marker(model, ids, args.length, args.batch_size)
        results[run] = {key: probe_accuracy(value, labels, args.vocabulary) for key, value in features.items()}
        print(run, {key: round(value, 3) for key, value in results[run].items()}, flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"options": vars(args), "chance": 1 / args.vocabulary, "probe_accuracy": results,
                                  "content_token_deltas": content_deltas}, indent=2) + "\n")
    plot(results, 1 / args.vocabulary, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
