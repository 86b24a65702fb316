"""Decoding compiled with torch.compile on a CPU: ms/token eager vs compiled vs transformers' Mamba.

Models (configs/small.json size: hidden 256, 4 layers, vocab 4096):
    serpent            SeRpEnt, eager (every row steps every SSM; `where` keeps the emitters' states)
    serpent-compiled   the same model's forward compiled as generate() compiles it (`get_compiled_call` with
                       CompileConfig(fullgraph=True, dynamic=None, mode="default")): the device-neutral step
    hf-mamba           transformers' MambaForCausalLM of the same width and depth, eager (the anchor)
    mamba-eq           our Mamba of SeRpEnt's parameter count (configs/small-mamba.json, 14 layers), eager

Decode is timed as bench_generation.py times it (one untimed prefill of a 16-token prompt, then
`--new-tokens` cached greedy steps under inference_mode, models interleaved round by round, medians
and paired per-round ratios). Also measured:
    * compile seconds: the first three compiled steps at each batch size, after torch._dynamo.reset(), with
      an empty inductor cache (a user's first call; `--warm-inductor-cache` keeps ~/.cache's) (the
      first compiles a graph specialised to every size; the second recompiles it with the count of consumed
      tokens dynamic, as dynamic=None does with any value seen to change);
    * recompiles: graphs compiled by generate(compile_config=...) run at batch sizes 2, 5, 16 and 1 in turn
      (once the batch size changed, one graph serves every batch size above 1; batch 1 is specialised);
    * exactness: the compiled steps' greedy tokens and their logits against eager decoding.

Run pinned to one otherwise idle core (pause training runs meanwhile):
    taskset -c 0 python benchmarks/compiled_decoding.py
    python benchmarks/compiled_decoding.py --repeats 1 --new-tokens 8 --output /tmp/compiled.json   # smoke run
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from transformers import CompileConfig  # noqa: E402

import common  # noqa: E402
from bench_generation import PROMPT_LENGTH, interleaved  # noqa: E402
from common import fmt, ratio  # noqa: E402

COMPILED = {"serpent-compiled": "serpent"}
LABELS = {**common.MODELS, "serpent-compiled": "SeRpEnt, 4L, compiled"}
GOALS = {1: 0.5, 16: 1.0}  # compiled ms/token at most this multiple of HF Mamba's, by batch (issue 22)


def compile_config():
    config = CompileConfig(fullgraph=True, dynamic=None, mode="default")
    config._compile_all_devices = True  # transformers compiles on accelerators only unless told otherwise
    return config


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["serpent", "serpent-compiled", "hf-mamba", "mamba-eq"], choices=list(LABELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warm-inductor-cache", action="store_true",
                        help="compile with the user's inductor cache (default: an empty one, as at a first call)")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "compiled-decoding-cpu.json"))
    return parser.parse_args()


def build(name):
    """(model, callable that runs its forward): compiled models are called through generate()'s compiled call."""
    model = common.build_model(COMPILED.get(name, name)).eval()
    return model, (model.get_compiled_call(compile_config()) if name in COMPILED else model)


@torch.inference_mode()
def decode(model, call, name, batch, new_tokens):
    """(seconds for `new_tokens` cached greedy steps after an untimed prefill, the steps' logits)."""
    logits, cache = common.prefill(model, common.token_ids(batch, PROMPT_LENGTH, seed=batch), COMPILED.get(name, name))
    keyword = common.cache_keyword(COMPILED.get(name, name))
    scores = []

    def steps():
        token = logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            out = call(input_ids=token, **{keyword: cache}, use_cache=True)
            scores.append(out.logits[:, -1])
            token = out.logits[:, -1:].argmax(-1)

    seconds, _ = common.timed(steps)
    return seconds, torch.stack(scores, 1)


def graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def recompiles_over_generate(model, batches, new_tokens=8):
    """Graphs compiled by each generate(compile_config=...) call at the given batch sizes, in turn."""
    torch._dynamo.reset()
    counts = {}
    for batch in batches:
        before = graphs()
        model.generate(common.token_ids(batch, PROMPT_LENGTH, seed=batch), max_new_tokens=new_tokens, do_sample=False,
                       compile_config=compile_config())
        counts[batch] = graphs() - before
        print(f"  generate at batch {batch}: {counts[batch]} graph(s) compiled", flush=True)
    return counts


def main():
    args = parse_args()
    if not args.warm_inductor_cache:  # read by inductor when it compiles, so setting it here is early enough
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    common.setup_torch(args.threads)
    machine = common.machine_info()
    print(f"CPU: {machine['cpu_model']}, torch {machine['torch']} ({machine['torch_threads']} threads), "
          f"transformers {machine['transformers']}")
    built = {name: build(name) for name in args.models}

    compile_seconds, exactness = {}, {}
    for batch in args.batches:
        torch._dynamo.reset()
        for name in [n for n in args.models if n in COMPILED]:
            model, call = built[name]
            start = time.perf_counter()
            decode(model, call, name, batch, 3)
            compile_seconds.setdefault(name, {})[batch] = time.perf_counter() - start
            print(f"  {name} first three steps at batch {batch} (compile): {compile_seconds[name][batch]:.1f} s", flush=True)
            _, compiled_logits = decode(model, call, name, batch, 32)
            _, eager_logits = decode(model, model, name, batch, 32)
            exactness.setdefault(name, {})[batch] = {
                "greedy_tokens_equal": bool(torch.equal(compiled_logits.argmax(-1), eager_logits.argmax(-1))),
                "max_logit_difference": float((compiled_logits - eager_logits).abs().max()),
            }
            print(f"    against eager over 32 steps: {exactness[name][batch]}", flush=True)
    for name in [n for n in args.models if n not in COMPILED]:  # warm-up of the eager paths
        decode(*built[name], name, 1, 4)

    records = []
    for batch in args.batches:
        times = interleaved(list(built), {n: args.repeats for n in built},
                            lambda n: decode(*built[n], n, batch, args.new_tokens)[0])
        for name in built:
            ms = 1e3 * common.median(times[name]) / args.new_tokens
            records.append({"model": name, "label": LABELS[name], "batch": batch, "ms_per_token": ms, "times": times[name]})
            print(f"  decode batch {batch} {name}: {ms:.2f} ms/token", flush=True)

    recompiles = recompiles_over_generate(built["serpent"][0], [2, 5, 16, 1]) if "serpent" in built else None
    summary = summarise(records, args.batches)
    common.write_json(args.output, {"benchmark": "compiled decoding", "args": vars(args), "machine": machine,
                                    "decode": records, "compile_seconds": compile_seconds, "exactness": exactness,
                                    "graphs_compiled_by_generate": recompiles, "summary": summary})


def summarise(records, batches):
    def find(name, batch):
        return next((r for r in records if r["model"] == name and r["batch"] == batch), None)

    rows, summary = [], {}
    for record in records:
        anchor, equal, eager = (find(n, record["batch"]) for n in ("hf-mamba", "mamba-eq", "serpent"))
        for key, other in (("vs_hf", anchor), ("vs_mamba_eq", equal), ("vs_eager", eager)):
            record[key] = ratio(record["ms_per_token"], other and other["ms_per_token"])
            record[key + "_paired"] = other and common.paired_ratio(record["times"], other["times"])
        rows.append([record["label"], record["batch"], fmt(record["ms_per_token"], ".2f"),
                     f"{fmt(record['vs_hf'], '.2f', 'x')} ({fmt(record['vs_hf_paired'], '.2f', 'x')})",
                     f"{fmt(record['vs_mamba_eq'], '.2f', 'x')} ({fmt(record['vs_mamba_eq_paired'], '.2f', 'x')})",
                     f"{fmt(record['vs_eager'], '.2f', 'x')} ({fmt(record['vs_eager_paired'], '.2f', 'x')})"])
    print("\nDecode ms/token (ratios: median of each / paired per round in brackets; lower is faster)")
    common.print_table(["model", "batch", "ms/token", "vs HF Mamba", "vs Mamba-eq", "vs SeRpEnt eager"], rows)
    for batch in batches:
        record = find("serpent-compiled", batch)
        if record is not None:
            met = record["vs_hf_paired"] is not None and record["vs_hf_paired"] <= GOALS.get(batch, 1.0)
            summary[f"compiled_vs_hf_batch{batch}"] = {"paired": record["vs_hf_paired"], "goal": GOALS.get(batch, 1.0),
                                                       "met": met}
            print(f"Goal: compiled <= {GOALS.get(batch, 1.0)}x HF Mamba at batch {batch}: "
                  f"{fmt(record['vs_hf_paired'], '.2f', 'x')} -> {'MET' if met else 'MISSED'}")
    return summary


if __name__ == "__main__":
    main()
