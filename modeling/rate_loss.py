"""The rate term: an optional training loss that asks each compressed branch to keep its nominal rate κ.

Nothing in the language-model loss asks a branch to compress: trained without this term, the κ = 0.25
branches of `small` drift to keeping 36-49% of the elements, and on sparse copying θ_Δ gives filler the
largest Δ (benchmarks/README.md, issue 24). This term charges every branch for the time its clock runs
beyond κ (H-Net charges its chunk boundaries the same way, for a target ratio):

    rate = mean over layers and compressed branches of  (M/L - κ) / (1 - κ),   M/L = mean Δ over real elements

M/L here is the clock's average speed, the differentiable count of samples per element (the emitted count
floor(t_L) / L differs from it by less than 1/L). The term is 0 at the nominal rate and 1 when a branch keeps
every element; since Δ > κ it never goes negative, so it acts as a price per unit of Δ that the task's
loss must outbid for an element to keep its own sample.
"""

import torch


def rate_loss(deltas, compressed_branches, valid=None):
    """deltas (layers, b, branches, l), 0 on padding; compressed_branches {index: κ}; valid (b, l) bool or None.
    Returns a scalar (float32): the mean of (M/L - κ) / (1 - κ) over layers and compressed branches."""
    if not compressed_branches:
        raise ValueError("the rate loss needs at least one compressed branch (a rate κ < 1 in compression_rates)")
    elements = deltas.shape[1] * deltas.shape[3] if valid is None else valid.sum()
    index = torch.tensor(list(compressed_branches), device=deltas.device)
    rates = torch.tensor(list(compressed_branches.values()), device=deltas.device, dtype=deltas.dtype)
    speed = deltas.index_select(2, index).sum(dim=(1, 3)) / elements  # (layers, compressed branches)
    return ((speed - rates) / (1.0 - rates)).mean().float()
