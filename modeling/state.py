"""Recurrent state of one branch for token-by-token generation (DESIGN.md section 3).

Every tensor has the batch as its first axis, so a cache can reorder, select or expand rows
(beam search, `num_return_sequences`) with one generic `map`. Sizes never depend on how many
tokens were generated. A forward pass returns new states; a decoding step (`step` methods)
advances them in place, as mamba-ssm's kernels do (and a captured CUDA graph needs), so the buffers a
cache holds are the same from the first token to the last.

    MixerState        conv (b, conv_kernel, d_inner)   last inputs of the causal convolution
                      ssm  (b, n, d_inner)             SSM state h, float32, channels last
    S4DState          ssm  (b, d, n/2) complex64       S4D state h (one of each conjugate pair)
    ResamplingState   neighbor_inputs (b, K, hidden)   last K elements x_n (oldest first)
                      neighbor_times  (b, K) float64   their clock times t_n
                      clock           (b,)   float64   t, the sum of all Δ so far
                      emitted         (b,)   float64   m, the number of compressed samples so far
                      last_output     (b, hidden)      y~_m, the SSM output of the latest sample
"""

from dataclasses import dataclass, fields

import torch


class _Rows:
    """Shared helpers: apply a function to every tensor, or overwrite every tensor from another state in place."""

    def map(self, fn):
        return type(self)(**{f.name: _map(getattr(self, f.name), fn) for f in fields(self)})

    def copy_(self, other):
        """In place: every tensor takes its values from `other` (a state of the same shapes)."""
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine.copy_(theirs)

    def tensors(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                yield value
            elif value is not None:
                yield from value.tensors()


def _map(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    return None if value is None else value.map(fn)


@dataclass
class MixerState(_Rows):
    conv: torch.Tensor
    ssm: torch.Tensor


@dataclass
class S4DState(_Rows):
    ssm: torch.Tensor


@dataclass
class ResamplingState(_Rows):
    neighbor_inputs: torch.Tensor
    neighbor_times: torch.Tensor
    clock: torch.Tensor
    emitted: torch.Tensor
    last_output: torch.Tensor


@dataclass
class BranchState(_Rows):
    mixer: MixerState
    resampling: ResamplingState | None = None
