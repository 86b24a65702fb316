"""The SeRpEnt block (DESIGN.md section 2).

    h -> RMSNorm -> [branch(κ_1), ..., branch(κ_B)] -> concat -> Linear -> + h

With a single branch the concat projection is absent and the block is exactly a Mamba block
(norm, mixer, residual), which is the baseline every comparison uses.
"""

import torch
from torch import nn

from .branch import Branch


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class SeRpEntBlock(nn.Module):
    def __init__(self, config, causal=True):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.branches = nn.ModuleList(Branch(config, rate, causal) for rate in config.compression_rates)
        self.projection = None
        if len(self.branches) > 1:
            self.projection = nn.Linear(len(self.branches) * config.hidden_size, config.hidden_size, bias=False)

    def empty_state(self, batch_size, device, dtype=torch.float32):
        return [branch.empty_state(batch_size, device, dtype) for branch in self.branches]

    def _combine(self, residual, outputs):
        mixed = outputs[0] if self.projection is None else self.projection(torch.cat(outputs, dim=-1))
        if self.residual_in_fp32:
            residual = residual.float()
        return (residual + mixed).to(outputs[0].dtype)

    def forward(self, hidden_states, valid=None, state=None, return_state=False):
        """hidden_states (b, l, d) -> (b, l, d), list of BranchState (or None), list of BranchStatistics."""
        x = self.norm(hidden_states)
        outputs, states, statistics = [], [], []
        for index, branch in enumerate(self.branches):
            y, branch_state, stats = branch(x, valid, None if state is None else state[index], return_state)
            outputs.append(y)
            states.append(branch_state)
            statistics.append(stats)
        return self._combine(hidden_states, outputs), (states if return_state else None), statistics

    def step(self, hidden_states, state):
        """hidden_states (b, d), list of BranchState -> (b, d), new list of BranchState."""
        x = self.norm(hidden_states)
        outputs, states = [], []
        for branch, branch_state in zip(self.branches, state):
            y, new_state = branch.step(x, branch_state)
            outputs.append(y)
            states.append(new_state)
        return self._combine(hidden_states, outputs), states
