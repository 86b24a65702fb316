"""The rate term: an optional training loss that charges each compressed branch for keeping too many elements.

Nothing in the language-model loss asks a branch to compress: trained without this term, the κ = 0.25
branches of `small` drift to keeping 36-49% of the elements, and on sparse copying θ_Δ gives filler the
largest Δ (benchmarks/README.md, issue 24). This term charges every branch for the time its clock runs
beyond a budget above κ (H-Net charges its chunk boundaries the same way, for a target ratio):

    excess = (M/L - κ) / (1 - κ)          M/L = mean Δ over real elements, so 0 <= excess < 1
    rate   = mean over layers and compressed branches of  max(excess - budget, 0) / (1 - budget)

M/L here is the clock's average speed, the differentiable count of samples per element (the emitted count
floor(t_L) / L differs from it by less than 1/L). The budget is needed because κ is Δ's floor, not a target:
κ < Δ_l for every element, so M/L = κ only when every Δ_l sits at the floor, fixed-stride pooling that
tells no element from another. Charged down to κ (budget 0), θ_Δ's sigmoid saturates at the floor within
a few dozen steps and its gradient vanishes there, for content as for filler (sparse copying, issue 24).
With a budget the term is a price only on the share of the free range (1 - κ) beyond it: a branch may keep
its informative elements, up to that share, for free.
"""

import torch


def rate_loss(deltas, compressed_branches, valid=None, budget=0.0):
    """deltas (layers, b, branches, l), 0 on padding; compressed_branches {index: κ}; valid (b, l) bool or None;
    budget in [0, 1). Returns a scalar (float32): the mean of max(excess - budget, 0) / (1 - budget)."""
    if not compressed_branches:
        raise ValueError("the rate loss needs at least one compressed branch (a rate κ < 1 in compression_rates)")
    elements = deltas.shape[1] * deltas.shape[3] if valid is None else valid.sum()
    index = torch.tensor(list(compressed_branches), device=deltas.device)
    rates = torch.tensor(list(compressed_branches.values()), device=deltas.device, dtype=deltas.dtype)
    speed = deltas.index_select(2, index).sum(dim=(1, 3)) / elements  # (layers, compressed branches)
    excess = (speed - rates) / (1.0 - rates)
    return ((excess - budget).clamp(min=0.0) / (1.0 - budget)).mean().float()
