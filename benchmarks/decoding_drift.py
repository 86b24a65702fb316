"""How far token-by-token decoding drifts from the forward pass, for trained checkpoints.

For each checkpoint and each of --sequences held-out sequences of --length tokens: one forward
pass gives every compressed branch's emission decisions (whether element l emits, i.e. floor(t_l)
grows) and the logits; a one-token prefill followed by one cached step per token gives them
again. Reported per checkpoint: emission flips per 1,000 tokens (decisions that differ, summed
over layers and branches), the first token where any decision differs, how many tokens leave some
branch's clock off the forward pass's (a Δ rounded to a neighbouring 2^-20 step: the precursor
of a flip), the largest logit difference and greedy agreement (the share of positions whose argmax is the same).

With delta_source = "embedding" every decision is exact (expect 0 flips and 100% agreement);
with "hidden" θ_Δ reads hidden states that the two paths round differently, and a flipped
decision shifts the branch's clock from there on.

    python benchmarks/decoding_drift.py DATA/wikitext-103-v1 RUN_DIR [RUN_DIR ...] --length 2000

RUN_DIR: a checkpoint written by training/train_lm.py (model and tokenizer). Writes --output (JSON).
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import serpent_hf  # noqa: F401  (registers SeRpEnt with the Auto classes)
from serpent_hf.compat import CACHE_NAME

from quality_wikitext import HELD_OUT, read_articles  # the same held-out articles as the quality study


def parse():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", help="wiki.valid.tokens of wikitext-103-v1, or the folder holding it")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--sequences", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/decoding-drift-cpu.json")
    return parser.parse_args()


def emissions(clock):
    """clock (layers, b, branches, l) -> whether each element emits (floor of the clock grows), bool."""
    emitted = torch.floor(clock)
    return torch.diff(emitted, dim=-1, prepend=torch.zeros_like(emitted[..., :1])) > 0


def step_through(model, ids):
    """One-token prefill, then one cached step per token -> every compressed branch's clock (layers, b, compressed,
    l) after each token, and the logits."""
    out = model(ids[:, :1], use_cache=True)
    cache, logits, clocks = getattr(out, CACHE_NAME), [out.logits], []

    def clock_now():
        return torch.stack([torch.stack([s.resampling.clock for s in layer if s.resampling is not None], -1)
                            for layer in cache.layer_states])  # (layers, b, compressed)

    clocks.append(clock_now().clone())
    for position in range(1, ids.shape[1]):
        logits.append(model(ids[:, position : position + 1], past_key_values=cache).logits)
        clocks.append(clock_now().clone())
    return torch.stack(clocks, dim=-1), torch.cat(logits, dim=1)


def measure(checkpoint, text, length, sequences):
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = torch.tensor(tokenizer(text)["input_ids"])
    compressed = list(model.config.compressed_branches)
    rows, started = [], time.perf_counter()
    for index in range(sequences):
        chunk = ids[index * length : (index + 1) * length].unsqueeze(0)
        if chunk.shape[1] < length:
            break
        with torch.no_grad():
            full = model(chunk, output_deltas=True)
            clock = full.deltas[:, :, compressed].cumsum(-1)  # exact: every Δ is a multiple of 2^-20
            stepped_clock, stepped = step_through(model, chunk)
        differ = emissions(stepped_clock) != emissions(clock)
        positions = differ.any(dim=(0, 1, 2)).nonzero()
        off = (stepped_clock != clock).any(dim=(0, 1, 2)).nonzero()
        rows.append({
            "flips": int(differ.sum()),
            # tokens after which some branch's clock differs from the forward pass's (by a multiple of 2^-20)
            "clock_mismatch_tokens": len(off),
            "first_clock_mismatch_token": int(off[0]) if len(off) else None,
            "first_flip_token": int(positions[0]) if len(positions) else None,
            "max_logit_difference": float((stepped - full.logits).abs().max()),
            "greedy_agreement": float((stepped.argmax(-1) == full.logits.argmax(-1)).float().mean()),
        })
        print(f"{checkpoint} sequence {index}: {rows[-1]} ({time.perf_counter() - started:.0f} s)", flush=True)
    tokens = len(rows) * length
    return {"checkpoint": str(checkpoint), "delta_source": model.config.delta_source,
            "layers": model.config.num_hidden_layers, "compression_rates": model.config.compression_rates,
            "length": length, "sequences": rows,
            "flips_per_1000_tokens": 1000 * sum(row["flips"] for row in rows) / max(tokens, 1),
            "greedy_agreement": sum(row["greedy_agreement"] for row in rows) / max(len(rows), 1)}


def main():
    args = parse()
    _, articles = read_articles(args.data)
    text = "".join(line for article in articles[-HELD_OUT:] for line in article)
    results = {"length": args.length, "machine": "cpu", "torch": torch.__version__,
               "checkpoints": [measure(path, text, args.length, args.sequences) for path in args.checkpoints]}
    print("\n| checkpoint | delta_source | flips per 1,000 tokens | first flip at token | tokens with a clock off "
          "| greedy agreement |")
    print("|---|---|---|---|---|---|")
    for row in results["checkpoints"]:
        firsts = [seq["first_flip_token"] for seq in row["sequences"] if seq["first_flip_token"] is not None]
        print(f"| {row['checkpoint']} | {row['delta_source']} | {row['flips_per_1000_tokens']:.2f} | "
              f"{min(firsts) if firsts else 'none'} | {sum(seq['clock_mismatch_tokens'] for seq in row['sequences'])} | "
              f"{100 * row['greedy_agreement']:.2f}% |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
