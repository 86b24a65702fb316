"""Shared helpers for the CPU benchmarks: model builders, timing, peak memory, tables, JSON.

Not a benchmark by itself. `bench_training.py` and `bench_generation.py` import it, and it is
also the entry point of the memory probe they start in a fresh subprocess:

    python benchmarks/common.py --probe '{"model": "serpent", "op": "train", "batch": 4, "length": 256, "threads": 1}'

Models (one name per model across both benchmarks):
    serpent           SeRpEnt, configs/small.json: hidden 256, 4 layers, vocab 4096, rates (1, 0.5, 0.25)
    mamba             our Mamba baseline at the same size: the same code with compression_rates = [1.0]
    mamba-eq          our equal-parameter Mamba baseline, configs/small-mamba.json (14 layers)
    hf-mamba          transformers' MambaForCausalLM, hidden 256, 4 layers, vocab 4096, N 16, expand 2, conv 4:
                      its pure-PyTorch path, a sequential loop over the sequence (no mamba-ssm on a CPU)
    hf-mamba-mambapy  the same model with MambaConfig(use_mambapy=True): the full-sequence scan runs as
                      mambapy's parallel scan (mambapy.pscan.pscan, Blelloch, autograd through it), the
                      strongest training path transformers' Mamba has on a CPU and the training anchor
                      (TRAINING_ANCHOR). Needs the `mambapy` package: without it transformers silently
                      takes the sequential loop, so build_model refuses to build this model instead.

Peak memory method: torch's CPU allocations are invisible to tracemalloc, so each (model, op,
length) runs in a fresh Python process that builds the model and the inputs, reads its resident
set size (baseline), resets the kernel's peak-RSS counter (/proc/self/clear_refs), runs the op
once and reports the peak RSS (VmHWM) minus the baseline. Peak RSS includes every transient
tensor and allocator slack, as the OS sees it.
"""

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the transformers Mamba must not look for hub kernels
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its "falling back to PyTorch" notices

import torch  # noqa: E402

MODELS = {
    "serpent": "SeRpEnt (1, 0.5, 0.25), 4L",
    "mamba": "Mamba baseline (ours), 4L",
    "mamba-eq": "Mamba baseline (ours), 14L equal-param",
    "hf-mamba": "HF MambaForCausalLM, 4L (sequential scan)",
    "hf-mamba-mambapy": "HF MambaForCausalLM, 4L, use_mambapy (parallel scan)",
}
ANCHOR = "hf-mamba"  # generation's anchor (decoding steps do not scan, so use_mambapy changes nothing there)
TRAINING_ANCHOR = "hf-mamba-mambapy"  # training's anchor: HF Mamba's fastest CPU training path
HF_MODELS = ("hf-mamba", "hf-mamba-mambapy")
BASELINE = "mamba"
EQUAL_PARAMETER = "mamba-eq"


# ---------------------------------------------------------------- setup and machine info


def setup_torch(threads):
    """Fix the intra-op thread count (1 by default: on a shared 2-core machine, two OpenMP threads
    that compete with other processes make single runs vary by 10x) and disable autograd anomaly checks."""
    torch.set_num_threads(threads)
    torch.autograd.set_detect_anomaly(False)


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state():
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "modeling", "serpent_hf"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return {"commit": commit, "modeling_dirty": bool(dirty)}
    except OSError:
        return {"commit": None, "modeling_dirty": None}


def machine_info():
    import transformers

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "git": _git_state(),
    }


# ---------------------------------------------------------------- models


def mambapy_status():
    """(True, where mambapy.pscan was imported from) or (False, why it cannot be used).

    transformers' Mamba takes the parallel scan only when `use_mambapy=True` and its
    is_mambapy_available() sees the package; otherwise it falls back to the sequential loop without
    an error, which would put the slow path under the fast path's name."""
    try:
        import mambapy.pscan
    except Exception as error:  # ImportError, or anything its import raises
        return False, f"mambapy is not importable ({type(error).__name__}: {error}); install it with `pip install mambapy`"
    from transformers.utils.import_utils import is_mambapy_available

    if not is_mambapy_available():
        return False, "mambapy imports, but transformers' is_mambapy_available() is False, so it would not use it"
    return True, mambapy.pscan.__file__


def count_pscan_calls(fn):
    """Run fn() with mambapy.pscan.pscan wrapped in a call counter; return (calls, fn's result).

    transformers' mamba_selective_scan does `from mambapy.pscan import pscan` at every call, so the
    wrapper sees every parallel scan; zero calls means the model ran some other path."""
    import mambapy.pscan

    original, calls = mambapy.pscan.pscan, [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    mambapy.pscan.pscan = counting
    try:
        result = fn()
    finally:
        mambapy.pscan.pscan = original
    return calls[0], result


def build_model(name, seed=0):
    """A freshly initialised causal LM (float32, CPU) for one of MODELS."""
    torch.manual_seed(seed)
    if name in HF_MODELS:
        from transformers import MambaConfig, MambaForCausalLM

        use_mambapy = name == "hf-mamba-mambapy"
        if use_mambapy:
            available, reason = mambapy_status()
            if not available:
                raise RuntimeError(f"{name}: {reason}")
        config = MambaConfig(hidden_size=256, num_hidden_layers=4, vocab_size=4096, state_size=16, expand=2, conv_kernel=4,
                             use_mambapy=use_mambapy)
        return MambaForCausalLM(config)
    from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM

    if name == "serpent":
        config = SeRpEntConfig.from_pretrained(REPO / "configs" / "small.json")
    elif name == "mamba":
        config = SeRpEntConfig.from_pretrained(REPO / "configs" / "small.json", compression_rates=[1.0])
    elif name == "mamba-eq":
        config = SeRpEntConfig.from_pretrained(REPO / "configs" / "small-mamba.json")
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return SeRpEntForCausalLM(config)


def cache_keyword(name):
    """The name under which a model takes and returns its cache in the installed transformers:
    `cache` from 5.24 on; before, `cache_params` for transformers' Mamba and `past_key_values` for SeRpEnt."""
    from serpent_hf.compat import CACHE_NAME

    return "cache_params" if name in HF_MODELS and CACHE_NAME == "past_key_values" else CACHE_NAME


def count_parameters(model):
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def token_ids(batch, length, vocab_size=4096, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


# ---------------------------------------------------------------- the measured operations


def train_step(model, ids):
    """One forward + backward with the LM loss (no optimiser step: it is the same for every model)."""
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss


def prefill(model, ids, name):
    """Consume a prompt and return the recurrent cache and the last position's logits."""
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return out.logits, getattr(out, cache_keyword(name))


def timed(fn):
    """Run fn once after a garbage collection (not timed); return (seconds, result)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values):
    return statistics.median(values) if values else None


def paired_ratio(numerators, denominators):
    """Median over rounds of numerator / denominator timed in the same round (models run interleaved):
    load that drifts between rounds cancels out, which the ratio of two medians does not do."""
    return median([n / d for n, d in zip(numerators, denominators)])


# ---------------------------------------------------------------- peak memory in a fresh process


def _current_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes():
    """VmHWM, the peak RSS of this address space. (ru_maxrss would do, but Linux carries it over
    from the parent through fork + exec, so a child of a large benchmark process inherits its peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _reset_peak_rss():
    """Set the peak RSS to the current RSS (Linux >= 4.0), so the peak seen later belongs to the op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _probe(spec):
    """Runs inside the subprocess: build, read baseline RSS, run the op once, report the peak."""
    setup_torch(spec["threads"])
    model = build_model(spec["model"], spec.get("seed", 0))
    ids = token_ids(spec["batch"], spec["length"])
    if spec["op"] == "train":
        model.train()
        run = lambda: train_step(model, ids)  # noqa: E731
    elif spec["op"] == "prefill":
        model.eval()
        run = lambda: prefill(model, ids, spec["model"])  # noqa: E731
    else:
        raise ValueError(f"unknown op {spec['op']!r}")
    gc.collect()
    baseline = _current_rss_bytes()
    reset = _reset_peak_rss()
    seconds, _ = timed(run)
    peak = _peak_rss_bytes()
    return {
        "peak_reset_before_op": reset,
        "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_delta_mb": max(peak - baseline, 0) / 2**20,
        "seconds": seconds,
    }


def measure_peak_memory(model, op, batch, length, threads, timeout=None):
    """Peak RSS above the post-construction baseline of one op, in a fresh subprocess.

    Returns the probe's dict (with `seconds`, the cold time of that one op) or {"error": ...}.
    """
    spec = {"model": model, "op": op, "batch": batch, "length": length, "threads": threads}
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- output


def fmt(value, spec=".1f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def print_table(headers, rows):
    """Markdown table, so a run's output can be pasted into an issue or the README."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print(line(row))


def write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload.setdefault("machine", {})["load_average_at_end"] = list(os.getloadavg())
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="memory probe (used by the benchmarks)")
    parser.add_argument("--probe", required=True, help="JSON: model, op (train|prefill), batch, length, threads")
    print(json.dumps(_probe(json.loads(parser.parse_args().probe))))
