"""One SeRpEnt branch (DESIGN.md section 1): resample at rate κ, run an SSM, map back.

    x (b, l, d) --Δ, clock--> x~ (b, M, d) --SSM--> y~ (b, M, d) --decompress--> y (b, l, d)

A branch at κ = 1 is the identity resampling: a plain SSM over x, no gather and no basis, so
a one-branch model is exactly a Mamba (or S4D) model.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .mamba_mixer import MambaMixer
from .resampling import SelectiveResampler
from .state import BranchState


@dataclass
class BranchStatistics:
    """What a branch did with its input: Δ (delta) per element (b, l), or (b,) for a decoding step, and new
    compressed samples per row (b,)."""

    deltas: torch.Tensor
    compressed_lengths: torch.Tensor


class BranchOutput(NamedTuple):
    """What a branch returns, from a forward pass (output (b, l, d)) and from a decoding step (output (b, d))."""

    output: torch.Tensor
    state: BranchState | None
    statistics: BranchStatistics


def host_reads_are_free(device):
    """Whether reading a tensor's values on the host costs no device synchronisation (a CPU tensor) and breaks no
    graph (not while torch.compile traces, where a read would split the step into pieces)."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def build_mixer(config):
    """The SSM of a branch, chosen by `config.ssm_type`."""
    if config.ssm_type == "mamba":
        return MambaMixer(config)
    if config.ssm_type == "s4d":
        from .s4d import S4DMixer

        return S4DMixer(config)
    raise ValueError(f"unknown ssm_type {config.ssm_type!r}; expected 'mamba' or 's4d'")


class Branch(nn.Module):
    def __init__(self, config, compression_rate, causal=True):
        super().__init__()
        self.compression_rate = compression_rate
        self.mixer = build_mixer(config)
        self.resampler = None
        if compression_rate < 1.0:
            self.resampler = SelectiveResampler(
                config.hidden_size,
                compression_rate,
                config.num_neighbors,
                config.num_basis,
                causal=causal,
                delta_bias_init=config.delta_bias_init,
                delta_from_input=config.delta_source == "hidden",
                compression_operator=config.compression_operator,
            )

    def empty_state(self, batch_size, device, dtype=torch.float32):
        resampling = None if self.resampler is None else self.resampler.empty_state(batch_size, device, dtype)
        return BranchState(mixer=self.mixer.empty_state(batch_size, device, dtype), resampling=resampling)

    def forward(self, x, valid=None, state=None, logits=None, return_state=False, decoding_step=False):
        """x (b, l, d); valid (b, l) bool or None; state: BranchState of the previous chunk or None;
        logits (b, l) float64: θ_Δ's, from the token embeddings (delta_source "embedding"), or None.

        Returns a BranchOutput: y (b, l, d), the new BranchState (None unless return_state), BranchStatistics.
        With decoding_step=True: one element x (b, d) and logits (b,), `state` advanced in place (`step`).
        """
        if decoding_step:
            return self.step(x, state, logits)
        batch, length, _ = x.shape
        if self.resampler is None:
            y, mixer_state = self.mixer(x, valid, None if state is None else state.mixer, return_state)
            ones = torch.ones(batch, length, device=x.device, dtype=torch.float64)
            deltas = ones if valid is None else ones * valid
            statistics = BranchStatistics(deltas, deltas.sum(-1).long())
            return BranchOutput(y, BranchState(mixer_state) if return_state else None, statistics)

        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)  # padding contributes nothing to any sample
        plan = self.resampler.plan(x, valid, logits, None if state is None else state.resampling)
        samples = self.resampler.compress(x, plan)
        outputs, mixer_state = self.mixer(samples, plan.sample_valid, None if state is None else state.mixer,
                                          return_state)
        y, last_output = self.resampler.decompress(outputs, plan)
        new_state = None
        if return_state:
            new_state = BranchState(mixer=mixer_state, resampling=self.resampler.advance(x, plan, last_output))
        return BranchOutput(y, new_state, BranchStatistics(plan.deltas, plan.new_counts))

    def step(self, x, state, logits=None):
        """One element x (b, d) -> BranchOutput with y (b, d); `state` (BranchState) is advanced in place and
        returned; logits (b,) as in forward.

        The resampling is forward's, on a chunk of one element; only the SSM steps its recurrence instead of
        scanning, and only in the rows that emit (`valid`, as a chunk's SSM skips the samples past a row's own):
        the step computes every row and the mixer leaves the others' state as it was, since a data-dependent
        choice of rows would be a host read per token (a device synchronisation, a graph break). Where that read
        is free (a CPU, not compiling), a step in which no row emits skips the SSM: at batch 1 a
        compressed branch emits at only a share κ..1 of the tokens.
        """
        if self.resampler is None:
            y = self.mixer(x, state=state.mixer, decoding_step=True)
            ones = torch.ones(x.shape[0], device=x.device, dtype=torch.float64)
            return BranchOutput(y, state, BranchStatistics(ones, ones.long()))
        x = x.unsqueeze(1)
        plan = self.resampler.plan(x, None, None if logits is None else logits.unsqueeze(1), state.resampling, width=1)
        emits = plan.sample_valid[:, 0]
        output = state.resampling.last_output  # a placeholder: decompress reads the new output only where a row emits
        if not host_reads_are_free(x.device) or bool(emits.any()):
            output = self.mixer(self.resampler.compress(x, plan)[:, 0], valid=emits, state=state.mixer,
                                decoding_step=True)
        y, last_output = self.resampler.decompress(output.unsqueeze(1), plan)
        state.resampling.copy_(self.resampler.advance(x, plan, last_output))
        return BranchOutput(y[:, 0], state, BranchStatistics(plan.deltas[:, 0], plan.new_counts))
