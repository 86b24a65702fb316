"""The SeRpEnt block (DESIGN.md section 2).

    h -> RMSNorm -> [branch(κ_1), ..., branch(κ_B)] -> concat -> Linear -> + h

With a single branch the concat projection is absent and the block is exactly a Mamba block
(norm, mixer, residual), which is the baseline every comparison uses.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .branch import Branch
from .decoding import decoding_linear


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        # Normalised in float32 (as Mamba does), then scaled in the input dtype.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class ConcatProjection(nn.Linear):
    """The Linear (branches · d -> d) after the concatenated branch outputs; its own type so that initialisation
    can tell it from the other Linears."""


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

    def _combine(self, residual, outputs, decoding=False):
        mixed = outputs[0]
        if self.projection is not None:
            concat = torch.cat(outputs, dim=-1)
            mixed = decoding_linear(self.projection, concat) if decoding else self.projection(concat)
        if self.residual_in_fp32:
            residual = residual.float()
        return (residual + mixed).to(outputs[0].dtype)

    def branch_logits(self, logits):
        """θ_Δ's logits for every branch: logits (..., C) for the C compressed branches in order (or None) ->
        a list with one (...) tensor per compressed branch and None for the κ = 1 branch."""
        if logits is None:
            return [None] * len(self.branches)
        columns = iter(logits.unbind(-1))
        return [None if branch.resampler is None else next(columns) for branch in self.branches]

    def forward(self, hidden_states, valid=None, state=None, return_state=False, decoding_step=False, logits=None):
        """hidden_states (b, l, d) -> (b, l, d), list of BranchState (or None), list of BranchStatistics.

        logits (b, l, C) float64: θ_Δ's for the C compressed branches, from the token embeddings (delta_source
        "embedding"); None when each branch's θ_Δ reads the block's input ("hidden").
        With decoding_step=True: one element (b, d) -> (b, d), `state` advanced in place (`step`). Decoding calls
        the block, not `step`, so that hooks on it run (accelerate places and offloads weights with hooks).
        """
        if decoding_step:
            return self.step(hidden_states, state, logits)
        x = self.norm(hidden_states)
        outputs, states, statistics = [], [], []
        for index, (branch, branch_logits) in enumerate(zip(self.branches, self.branch_logits(logits))):
            previous = None if state is None else state[index]
            y, branch_state, stats = branch(x, valid, previous, return_state, branch_logits)
            outputs.append(y)
            states.append(branch_state)
            statistics.append(stats)
        return self._combine(hidden_states, outputs), (states if return_state else None), statistics

    def step(self, hidden_states, state, logits=None):
        """hidden_states (b, d) -> (b, d); `state` (list of BranchState) is advanced in place; logits (b, C) or None."""
        x = self.norm(hidden_states)
        per_branch = zip(self.branches, state, self.branch_logits(logits))
        outputs = [branch.step(x, branch_state, branch_logits) for branch, branch_state, branch_logits in per_branch]
        return self._combine(hidden_states, outputs, decoding=True)
