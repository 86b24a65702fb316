"""The Mamba mixer (Gu & Dao, 2023, Algorithm 2): the SSM every SeRpEnt branch runs.

    x, z   = split(in_proj(u))                      gate z, input x             (b, l, 2·d_inner)
    x      = silu(causal_depthwise_conv(x))                                      (b, l, d_inner)
    Δ, B, C = dt_proj(·), x_proj(x) split          Δ = softplus(dt_proj(Δ_low)) (b, l, d_inner), (b, l, n)
    y      = selective_scan(x, Δ, A = -exp(A_log), B, C, D) ⊙ silu(z)
    out    = out_proj(y)                                                         (b, l, hidden)

Parameter names match transformers' `MambaMixer`, so Mamba checkpoints load into a rate-1.0
branch unchanged.

Recurrent state (per row), both channels last so that a decoding step works on contiguous
rows of d_inner channels (about 2.5x faster on a CPU than reducing over the short axis):
`conv` (b, conv_kernel, d_inner) holds the last conv_kernel inputs of the convolution (the
newest last), `ssm` (b, n, d_inner) the SSM state h (see scan.py). mamba-ssm's kernels, which
use (b, d_inner, ·), read and write the transposed views through their strides.

Skipped steps: `valid` (b, l) marks real elements. An invalid element is an identity step:
its conv input is zero and its Δ is zero, so exp(Δ·A) = 1 and nothing is added to h. Leading
invalid elements (left padding) therefore leave a fresh state untouched, trailing ones
(the filler after a short compressed row) leave the final state equal to the state after
the row's last real element. The final conv window is gathered at that last real element.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import (
    causal_conv_dispatch,
    conv_step_dispatch,
    fused_mixer_dispatch,
    selective_scan_dispatch,
    selective_state_update_dispatch,
)
from .state import MixerState


def mamba_dt_bias(intermediate_size, time_step_min=1e-3, time_step_max=0.1, time_step_floor=1e-4):
    """Mamba's Δ initialisation: softplus(bias) is log-uniform in [time_step_min, time_step_max]."""
    dt = torch.exp(
        torch.rand(intermediate_size) * (math.log(time_step_max) - math.log(time_step_min)) + math.log(time_step_min)
    ).clamp(min=time_step_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


class MambaMixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.intermediate_size = config.intermediate_size
        self.state_size = config.state_size
        self.conv_kernel = config.conv_kernel
        self.time_step_rank = config.time_step_rank
        self.use_kernels = getattr(config, "use_kernels", None)
        self.config = config

        self.in_proj = nn.Linear(self.hidden_size, 2 * self.intermediate_size, bias=config.use_bias)
        # Depthwise causal convolution; causality comes from the left context we prepend, not from padding.
        self.conv1d = nn.Conv1d(
            self.intermediate_size,
            self.intermediate_size,
            kernel_size=self.conv_kernel,
            groups=self.intermediate_size,
            bias=config.use_conv_bias,
        )
        self.x_proj = nn.Linear(self.intermediate_size, self.time_step_rank + 2 * self.state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, self.intermediate_size, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.intermediate_size, self.state_size))
        self.D = nn.Parameter(torch.empty(self.intermediate_size))
        self.out_proj = nn.Linear(self.intermediate_size, self.hidden_size, bias=config.use_bias)
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                self.get_parameter(name).copy_(value)

    def initial_parameters(self):
        """Mamba's initialisation of the SSM parameters (S4D-real A, D = 1, log-uniform Δ)."""
        config = self.config
        A = torch.arange(1, self.state_size + 1, dtype=torch.float32).expand(self.intermediate_size, -1)
        dt_std = self.time_step_rank**-0.5 * config.time_step_scale
        if config.time_step_init_scheme == "constant":
            dt_weight = torch.full_like(self.dt_proj.weight, dt_std)
        else:
            dt_weight = torch.empty_like(self.dt_proj.weight).uniform_(-dt_std, dt_std)
        return {
            "A_log": torch.log(A),
            "D": torch.ones(self.intermediate_size),
            "dt_proj.weight": dt_weight,
            "dt_proj.bias": mamba_dt_bias(
                self.intermediate_size, config.time_step_min, config.time_step_max, config.time_step_floor
            ),
        }

    def empty_state(self, batch_size, device, dtype=torch.float32):
        return MixerState(
            conv=torch.zeros(batch_size, self.conv_kernel, self.intermediate_size, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.state_size, self.intermediate_size, device=device, dtype=torch.float32),
        )

    def _ssm_inputs(self, x):
        """x (..., d_inner) after the convolution -> Δ (..., d_inner) float32, B, C (..., n)."""
        low_rank, B, C = torch.split(self.x_proj(x), [self.time_step_rank, self.state_size, self.state_size], dim=-1)
        delta = F.softplus(self.dt_proj(low_rank).float())
        return delta, B, C

    def forward(self, hidden_states, valid=None, state=None, return_state=False, decoding_step=False):
        """hidden_states (b, l, hidden); valid (b, l) bool or None; state: MixerState or None.

        Returns (b, l, hidden) and the final MixerState (or None unless return_state).
        With decoding_step=True: one element (b, hidden) -> (b, hidden), `state` advanced in place (`step`) for the
        rows where valid (b,) is True (all without it).
        Decoding calls the mixer, not `step`, so that hooks on it run (accelerate's offloading loads A_log and D).
        """
        if decoding_step:
            return self.step(hidden_states, state, valid)
        batch, length, _ = hidden_states.shape
        if self.training and state is None and not return_state and valid is None:
            fused = fused_mixer_dispatch(self, hidden_states, self.use_kernels)
            if fused is not None:
                return fused, None
        fresh = state is None  # a new sequence: the scan starts from zero, as the CUDA kernel does
        if fresh and return_state:
            state = self.empty_state(batch, hidden_states.device, hidden_states.dtype)
        if length == 0:  # a compressed chunk in which no row emitted a sample: nothing changes
            return hidden_states.new_zeros(batch, 0, self.hidden_size), state
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        if valid is not None:
            x = x * valid.unsqueeze(-1).to(x.dtype)
        # (b, d_inner, k-1 + l): the last k-1 inputs of the previous chunk give the conv its causal context.
        x_channels = x.transpose(1, 2)
        if fresh:
            context = F.pad(x_channels, (self.conv_kernel - 1, 0))
        else:
            context = torch.cat([state.conv[:, 1:].transpose(1, 2).to(x.dtype), x_channels], dim=-1)
        x = causal_conv_dispatch(context, self.conv1d, self.use_kernels).transpose(1, 2)

        delta, B, C = self._ssm_inputs(x)
        if valid is not None:
            delta = delta * valid.unsqueeze(-1)
        A = -torch.exp(self.A_log.float())
        y, final_ssm = selective_scan_dispatch(
            x, delta, A, B, C, self.D, None if fresh else state.ssm, use_kernels=self.use_kernels
        )
        y = y.to(hidden_states.dtype) * F.silu(z)
        out = self.out_proj(y)
        if not return_state:
            return out, None
        return out, MixerState(conv=self._final_conv_window(context, state, valid), ssm=final_ssm)

    def _final_conv_window(self, context, state, valid):
        """The last `conv_kernel` inputs up to each row's last real element (the whole old window if none),
        as a conv state (b, k, d)."""
        full = torch.cat([state.conv[:, :1].transpose(1, 2).to(context.dtype), context], dim=-1)  # (b, d, k + l)
        length = full.shape[-1] - self.conv_kernel
        if valid is None:
            return full[..., -self.conv_kernel :].transpose(1, 2).contiguous()
        positions = torch.arange(length, device=valid.device)
        last = torch.where(valid, positions, -1).amax(dim=-1)  # (b,), -1 when the row has no real element
        window = last.unsqueeze(-1) + 1 + torch.arange(self.conv_kernel, device=valid.device)  # (b, k)
        return full.transpose(1, 2).gather(1, window.unsqueeze(-1).expand(-1, -1, full.shape[1]))

    def step(self, hidden_states, state, valid=None):
        """One element.  hidden_states (b, hidden) -> (b, hidden); `state` (MixerState) is advanced in place, except
        in rows where valid (b,) is False (their output is not meaningful), as a chunk treats invalid elements:
        Δ = 0 leaves h exactly as it was (exp(0·A) = 1, Δ·x = 0), and the conv window keeps its old inputs."""
        if self.A_log.is_meta:
            raise RuntimeError(
                "the mixer's parameters are offloaded (on the meta device) and only a call of the mixer loads "
                "them: step through mixer(x, state=state, decoding_step=True), not mixer.step"
            )
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        window = None if valid is None else state.conv.clone()
        x = conv_step_dispatch(state.conv, x, self.conv1d, self.use_kernels)
        delta, B, C = self._ssm_inputs(x)
        if valid is not None:
            state.conv.copy_(torch.where(valid.view(-1, 1, 1), state.conv, window))
            delta = delta * valid.unsqueeze(-1)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update_dispatch(state.ssm, x, delta, A, B, C, self.D, self.use_kernels)
        return self.out_proj(y.to(hidden_states.dtype) * F.silu(z))
