"""Where a SeRpEnt training step's time goes: the parts of one `small` block timed alone (CPU, one thread).

Forward + backward of each part at B = 4, L = 1,024 (`configs/small.json`, random init): the Mamba
mixer at the lengths the three branches see (L, L/2, L/4), the resampling of the two compressed
branches (plan, compress, decompress; no SSM), the concat projection, and the whole block. The
block's time over the L-length mixer's is what one SeRpEnt block costs in Mamba layers
(benchmarks/README.md, "One decoding path"). Medians of 3 timed runs after one untimed run.

    python benchmarks/training_breakdown.py
"""

import time
from pathlib import Path

import torch

from serpent_hf import SeRpEntConfig
from serpent_hf.modeling import MambaMixer, SelectiveResampler, SeRpEntBlock

ROOT = Path(__file__).resolve().parent.parent
BATCH, LENGTH = 4, 1024


def milliseconds(step, repeats=3):
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[repeats // 2]


def forward_backward(function, x):
    def step():
        x.grad = None
        function(x).float().pow(2).mean().backward()
    return step


def resampled(resampler):
    def function(x):
        plan = resampler.plan(x)
        samples, _ = resampler.decompress(resampler.compress(x, plan), plan)
        return samples
    return function


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = SeRpEntConfig.from_pretrained(ROOT / "configs" / "small.json")
    d = config.hidden_size
    mixer, block = MambaMixer(config), SeRpEntBlock(config)
    times = {}
    for length in (LENGTH, LENGTH // 2, LENGTH // 4):
        x = torch.randn(BATCH, length, d, requires_grad=True)
        times[f"Mamba mixer, L = {length}"] = milliseconds(forward_backward(lambda v: mixer(v)[0], x))
    x = torch.randn(BATCH, LENGTH, d, requires_grad=True)
    for rate in config.compression_rates[1:]:
        resampler = SelectiveResampler(d, rate, config.num_neighbors, config.num_basis)
        times[f"resampling, rate {rate}"] = milliseconds(forward_backward(resampled(resampler), x))
    concat = torch.randn(BATCH, LENGTH, len(config.compression_rates) * d, requires_grad=True)
    times["concat projection"] = milliseconds(forward_backward(block.projection, concat))
    logits = torch.randn(BATCH, LENGTH, len(config.compression_rates) - 1, dtype=torch.float64) - 2.0
    times["whole block"] = milliseconds(forward_backward(lambda v: block(v, logits=logits).hidden_states, x))
    for part, value in times.items():
        print(f"{part:28s} {value:8.1f} ms")
    print(f"whole block / Mamba mixer at L = {LENGTH}: {times['whole block'] / times[f'Mamba mixer, L = {LENGTH}']:.2f}x")


if __name__ == "__main__":
    main()
