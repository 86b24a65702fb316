"""SeRpEnt in plain PyTorch (no transformers): selective resampling over state space models.

Read in this order, which is the order of DESIGN.md:
    scan.py          the selective scan (reference, linear-time forward and backward)
    kernels.py       dispatch to mamba-ssm's CUDA kernels when they can run
    mamba_mixer.py   the Mamba mixer (parallel pass and one-step recurrence)
    s4d.py           the S4D layer (Vandermonde kernel, FFT convolution, one-step recurrence)
    selectivity.py   θ_Δ: per branch from its input, or of every branch from the token embeddings (exact)
    resampling.py    Δ clock, causal/bidirectional compression and decompression
    rate_loss.py     the optional training term that asks a compressed branch to keep its rate κ
    branch.py        resample -> SSM -> decompress at one compression rate
    block.py         RMSNorm, branches, concat projection, residual
    state.py         recurrent state for generation
"""

from .block import BlockOutput, ConcatProjection, RMSNorm, SeRpEntBlock
from .branch import Branch, BranchOutput, BranchStatistics, host_reads_are_free
from .mamba_mixer import MambaMixer
from .resampling import (
    CLOCK_QUANTUM,
    ChannelMixingBasis,
    GaussianBasis,
    ResamplingPlan,
    SelectiveResampler,
)
from .rate_loss import rate_loss
from .s4d import S4DMixer
from .selectivity import SelectivityNetwork
from .state import BranchState, MixerState, ResamplingState, S4DState

__all__ = [
    "CLOCK_QUANTUM",
    "BlockOutput",
    "Branch",
    "BranchOutput",
    "ChannelMixingBasis",
    "ConcatProjection",
    "BranchState",
    "BranchStatistics",
    "GaussianBasis",
    "MambaMixer",
    "MixerState",
    "RMSNorm",
    "ResamplingPlan",
    "ResamplingState",
    "S4DMixer",
    "S4DState",
    "SeRpEntBlock",
    "SelectiveResampler",
    "SelectivityNetwork",
    "host_reads_are_free",
    "rate_loss",
]
