"""The SeRpEnt block (DESIGN.md section 2).

    h -> RMSNorm -> [branch(κ_1), ..., branch(κ_B)] -> concat -> Linear -> + h

With a single branch the concat projection is absent and the block is exactly a Mamba block
(norm, mixer, residual), which is the baseline every comparison uses.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .branch import Branch


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        # Normalised in float32 (as Mamba does), then scaled in the weight's dtype: the residual stream may be float32
        # (residual_in_fp32) while the layers after the norm run in float16 or bfloat16.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(self.weight.dtype)


class ConcatProjection(nn.Linear):
    """The Linear (branches · d -> d) after the concatenated branch outputs; its own type so that initialisation
    can tell it from the other Linears."""


class BlockOutput(NamedTuple):
    """What a block returns, from a forward pass ((b, l, d)) and from a decoding step ((b, d)): the block's
    output, every branch's BranchState (None when not asked for), Δ of every branch (b, branches, l), or
    (b, branches) for a step, and every branch's new compressed samples (b, branches).

    Δ is a tensor of its own, not nested in a list: a reentrant gradient checkpoint passes gradients only through
    the tensors a layer returns at the top level, and the rate term (rate_loss.py) backpropagates through Δ."""

    hidden_states: torch.Tensor
    states: list | None
    deltas: torch.Tensor
    compressed_lengths: torch.Tensor


class SeRpEntBlock(nn.Module):
    def __init__(self, config, causal=True):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.branches = nn.ModuleList(Branch(config, rate, causal) for rate in config.compression_rates)
        self.projection = None
        if len(self.branches) > 1:
            self.projection = ConcatProjection(len(self.branches) * config.hidden_size, config.hidden_size, bias=False)

    def empty_state(self, batch_size, device, dtype=torch.float32):
        return [branch.empty_state(batch_size, device, dtype) for branch in self.branches]

    def branch_logits(self, logits):
        """θ_Δ's logits for every branch: logits (..., C) for the C compressed branches in order (or None) ->
        a list with one (...) tensor per compressed branch and None for the κ = 1 branch."""
        if logits is None:
            return [None] * len(self.branches)
        columns = iter(logits.unbind(-1))
        return [None if branch.resampler is None else next(columns) for branch in self.branches]

    def forward(self, hidden_states, valid=None, state=None, logits=None, return_state=False, decoding_step=False):
        """hidden_states (b, l, d) -> BlockOutput: (b, l, d), list of BranchState (or None), Δ and compressed lengths.

        logits (b, l, C) float64: θ_Δ's for the C compressed branches, from the token embeddings (delta_source
        "embedding"); None when each branch's θ_Δ reads the block's input ("hidden").
        With decoding_step=True: one element (b, d) -> BlockOutput with (b, d); `state` is advanced in place.
        Decoding calls the block and the block calls its branches, so that hooks on them run (accelerate places
        and offloads weights with hooks).
        """
        x = self.norm(hidden_states)
        outputs = []
        for index, (branch, branch_logits) in enumerate(zip(self.branches, self.branch_logits(logits))):
            previous = None if state is None else state[index]
            outputs.append(branch(x, valid=valid, state=previous, logits=branch_logits,
                                  return_state=return_state or decoding_step, decoding_step=decoding_step))
        mixed = outputs[0].output
        if self.projection is not None:
            mixed = self.projection(torch.cat([output.output for output in outputs], dim=-1))
        # residual_in_fp32: the stream between blocks stays float32 in a float16 or bfloat16 model (as Mamba's does), so
        # the sum of many blocks' small updates is not rounded to 8 bits after each one.
        residual = hidden_states.float() if self.residual_in_fp32 else hidden_states
        states = [output.state for output in outputs] if (return_state or decoding_step) else None
        deltas = torch.stack([output.statistics.deltas for output in outputs], dim=1)
        lengths = torch.stack([output.statistics.compressed_lengths for output in outputs], dim=-1)
        return BlockOutput(residual + mixed, states, deltas, lengths)
