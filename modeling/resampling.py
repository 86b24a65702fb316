"""Selective resampling (DESIGN.md section 1): Δ as a clock, a uniform grid on it, and back.

For one branch with compression rate κ (kappa) in (0, 1):

    Δ_l   = κ + (1 - κ) · sigmoid(θ_Δ(x_l))        interval, quantised to 2^-20, 0 on padding
    t_l   = Δ_1 + ... + Δ_l                          clock, float64
    M     = floor(t_L)                               compressed length, floor(κ·L) <= M <= L
    e_j   = min{ l : t_l >= j }                      emitter of sample j (each element emits at most one)
    x~_j  = Σ_{n = e_j-K+1 .. e_j}  a(j - t_n) ⊙ x_n           compression over K neighbours ("gate")
    y_l   = c(t_l - m_l) ⊙ y~_{m_l},   m_l = floor(t_l)         decompression (0 when m_l = 0)
    a(δ)  = W_a · φ(δ) + b_a,   c(δ) = W_c · ψ(δ) + b_c           learnable Gaussian bases

With compression_operator "linear" the neighbours are mixed across channels instead of gated per channel:
    x~_j  = Σ_n A(j - t_n) x_n,    A(δ) = Σ_g φ_g(δ) W_g + diag(b_a)    one d × d matrix W_g per basis function

The bidirectional variant (classification) builds x~_j from the K real elements nearest to
s_j = j in time, on both sides, and decompresses from the nearest grid point,
m_l = clamp(floor(t_l + 1/2), 1, M), with M = max(floor(t_L), 1) so every row has a sample.

Glossary (shapes):
    b batch, l length, d hidden size, M compressed length (max over the batch), K neighbours,
    G basis functions.

Causality: x~_j reads elements up to e_j only, and y_l reads y~_{floor(t_l)}, which was
emitted at or before l. Gradients reach θ_Δ through the times t_n inside the bases; the
integer choices (floor, searchsorted) have none.

A chunk of elements is resampled in three calls that read one ResamplingPlan: `plan` (Δ, the
clock from the state left by the previous chunk, the grid of new samples), `compress` and
`decompress`; `advance` gives the state after the chunk. The same code serves the full forward
pass, prefill, a cached multi-token continuation and a decoding step, which is a chunk of one
element whose grid has room for one sample (no host read decides the width).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .selectivity import SelectivityNetwork
from .state import ResamplingState

# Each Δ is a multiple of 2^-20: sums of such numbers are exact in float64 (up to t = 2^33), so
# the clock, and every floor taken of it, is identical however it is summed (DESIGN.md section 3).
CLOCK_QUANTUM = 2.0**-20


class GaussianBasis(nn.Module):
    """f(δ) = W · φ(δ) + b with φ_g(δ) = exp(-(δ - μ_g)² / (2 σ_g²)), g = 1..G, one output per channel."""

    def __init__(self, num_basis, channels, low, high, bias_value):
        super().__init__()
        self.centers = nn.Parameter(torch.empty(num_basis))
        self.log_widths = nn.Parameter(torch.empty(num_basis))
        self.weight = nn.Parameter(torch.empty(self.weight_shape(num_basis, channels)))
        self.bias = nn.Parameter(torch.empty(channels))
        self.low, self.high, self.bias_value = low, high, bias_value
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                self.get_parameter(name).copy_(value)

    @staticmethod
    def weight_shape(num_basis, channels):
        return (channels, num_basis)

    def initial_parameters(self):
        num_basis, channels = self.centers.shape[0], self.bias.shape[0]
        spacing = (self.high - self.low) / max(num_basis - 1, 1)
        return {
            "centers": torch.linspace(self.low, self.high, num_basis),
            "log_widths": torch.full((num_basis,), math.log(spacing)),
            "weight": torch.randn(channels, num_basis) * 0.02,
            "bias": torch.full((channels,), float(self.bias_value)),
        }

    def features(self, gaps):
        """gaps (...) float -> φ (..., G)."""
        return torch.exp(-0.5 * ((gaps.unsqueeze(-1) - self.centers) / self.log_widths.exp()) ** 2)

    def forward(self, gaps):
        """gaps (...) float -> (..., channels)."""
        return F.linear(self.features(gaps), self.weight, self.bias)

    def combine(self, gaps, neighbors):
        """The compressed sample Σ_n a(δ_n) ⊙ x_n: gaps (..., K), neighbors (..., K, d) -> (..., d)."""
        return (self(gaps) * neighbors).sum(dim=-2)


class ChannelMixingBasis(GaussianBasis):
    """The "linear" compression operator: A(δ) = Σ_g φ_g(δ) W_g + diag(b), a d × d map per gap.

    Σ_n A(δ_n) x_n is computed as Σ_g W_g (Σ_n φ_g(δ_n) x_n): the per-basis sums first, then one product with
    the G matrices side by side, so the cost over the gate is one (G·d -> d) product per sample.
    """

    @staticmethod
    def weight_shape(num_basis, channels):
        return (channels, num_basis, channels)

    def initial_parameters(self):
        channels, num_basis = self.bias.shape[0], self.centers.shape[0]
        # Each W_g x_n starts with the spread of the gate's a(δ) ⊙ x_n (0.02 per channel at unit inputs).
        weight = torch.randn(channels, num_basis, channels) * 0.02 / math.sqrt(channels)
        return {**super().initial_parameters(), "weight": weight}

    def forward(self, gaps):
        raise TypeError("the linear compression operator is a matrix per gap: call combine(gaps, neighbors)")

    def combine(self, gaps, neighbors):
        per_basis = torch.einsum("...kg,...kd->...gd", self.features(gaps), neighbors)
        mixed = F.linear(per_basis.flatten(-2), self.weight.flatten(1))
        return mixed + self.bias * neighbors.sum(dim=-2)


def nearest_neighbors(times, grid, num_neighbors):
    """The K real elements nearest in time to each grid point (bidirectional compression).

    times (b, l) float64, the clock of a fresh sequence (padding repeats its neighbour's time);
    grid (b, M) float64. Returns index (b, M, K) into l and in_range (b, M, K) bool, False where a
    row has fewer than K real elements.

    Real elements are those that move the clock (Δ >= κ > 0; padding has Δ = 0), so their times
    strictly increase and the K nearest to a point s form a window [w, w + K). Sliding the window
    one step right pays while the element it drops is farther from s than the one it takes,
    s - t_w > t_{w+K} - s; that test is true, then false, as w grows, so w is where it turns
    false. With e the first element at or after s, it is true for every w < e - K and false for
    every w >= e, leaving K candidates to test.
    """
    batch, length = times.shape
    K = num_neighbors
    positions = torch.arange(length, device=times.device)
    real = torch.diff(times, dim=-1, prepend=times.new_zeros(batch, 1)) > 0
    first_real = torch.where(real, positions, length).amin(dim=-1, keepdim=True).unsqueeze(-1)  # (b, 1, 1)
    end_real = torch.where(real, positions + 1, 0).amax(dim=-1, keepdim=True).unsqueeze(-1)
    emitter = torch.searchsorted(times.contiguous(), grid.contiguous(), side="left")  # e, (b, M)
    candidates = emitter.unsqueeze(-1) - K + torch.arange(K, device=times.device)  # (b, M, K)
    leaving = _rows(times, candidates.clamp(0, length - 1))
    entering = _rows(times, (candidates + K).clamp(0, length - 1))
    point = grid.unsqueeze(-1)
    slide = (point - leaving) > (entering - point)
    # Windows must lie among the real elements: slide past any start before the first, never past the last.
    slide = (slide | (candidates < first_real)) & (candidates + K < end_real)
    lowest, highest = first_real[..., 0], torch.maximum(end_real[..., 0] - K, first_real[..., 0])
    start = torch.minimum(torch.maximum(emitter - K + slide.sum(dim=-1), lowest), highest)
    index = start.unsqueeze(-1) + torch.arange(K, device=times.device)
    return index.clamp(max=length - 1), index < end_real


def _rows(tensor, index):
    """tensor (b, n, ...) indexed per row by index (b, ...) -> (b, ..., ...)."""
    batch = torch.arange(tensor.shape[0], device=tensor.device).view(-1, *([1] * (index.dim() - 1)))
    return tensor[batch, index]


@dataclass
class ResamplingPlan:
    """One chunk's resampling, decided before any sample is built (SelectiveResampler.plan).

    previous     ResamplingState after the chunk before (empty for a fresh sequence)
    deltas       Δ (b, l) float64, 0 on padding
    times        t (b, l) float64, the absolute clock after each element
    grid         (b, M) float64: the grid points j of the new samples (M: the most new samples of any row)
    sample_valid (b, M) bool: False past a row's own new samples
    new_counts   (b,) long: new samples per row
    """

    previous: ResamplingState
    deltas: torch.Tensor
    times: torch.Tensor
    grid: torch.Tensor
    sample_valid: torch.Tensor
    new_counts: torch.Tensor


class SelectiveResampler(nn.Module):
    def __init__(
        self, hidden_size, compression_rate, num_neighbors, num_basis, causal=True, delta_bias_init=-3.0,
        delta_from_input=True, compression_operator="gate",
    ):
        """compression_operator: "gate" (a(δ) ⊙ x_n) or "linear" (A(δ) x_n, see the top of this file).
        delta_from_input: θ_Δ reads this resampler's input (delta_source "hidden"); otherwise the caller passes
        θ_Δ's logits from the token embeddings (selectivity.py) and the resampler has no θ_Δ of its own."""
        super().__init__()
        if not 0.0 < compression_rate < 1.0:
            raise ValueError(f"a resampling branch needs a compression rate in (0, 1), got {compression_rate}")
        self.compression_rate = compression_rate
        self.num_neighbors = num_neighbors
        self.causal = causal
        # The smallest Δ after quantisation: rounding must never go below κ, or floor(κ·L) <= M could fail.
        self.min_delta = math.ceil(compression_rate / CLOCK_QUANTUM) * CLOCK_QUANTUM
        self.selectivity = SelectivityNetwork(hidden_size, bias_init=delta_bias_init) if delta_from_input else None
        gap_range = (-1.0, float(num_neighbors)) if causal else (-num_neighbors / 2 - 1.0, num_neighbors / 2 + 1.0)
        operator = {"gate": GaussianBasis, "linear": ChannelMixingBasis}[compression_operator]
        self.compression_basis = operator(num_basis, hidden_size, *gap_range, bias_value=1.0 / num_neighbors)
        self.decompression_basis = GaussianBasis(
            num_basis, hidden_size, *((0.0, 1.0) if causal else (-0.5, 0.5)), bias_value=1.0
        )

    def empty_state(self, batch_size, device, dtype=torch.float32):
        hidden = self.compression_basis.bias.shape[0]
        zeros64 = torch.zeros(batch_size, device=device, dtype=torch.float64)
        return ResamplingState(
            neighbor_inputs=torch.zeros(batch_size, self.num_neighbors, hidden, device=device, dtype=dtype),
            neighbor_times=torch.zeros(batch_size, self.num_neighbors, device=device, dtype=torch.float64),
            clock=zeros64,
            emitted=zeros64.clone(),
            last_output=torch.zeros(batch_size, hidden, device=device, dtype=dtype),
        )

    def deltas(self, x, valid=None, logits=None):
        """Δ (...,) float64: κ + (1-κ)·sigmoid(θ_Δ), quantised straight-through, 0 where valid is False.

        θ_Δ's logits (...,) are given (delta_source "embedding") or computed from x (..., d) ("hidden")."""
        if logits is None:
            logits, _ = self.selectivity(x)  # (..., 1): this branch's one network
            logits = logits.squeeze(-1)
        delta = self.compression_rate + (1.0 - self.compression_rate) * torch.sigmoid(logits)
        quantised = (torch.round(delta / CLOCK_QUANTUM) * CLOCK_QUANTUM).clamp(min=self.min_delta, max=1.0)
        delta = delta + (quantised - delta).detach() if delta.requires_grad else quantised
        if valid is not None:
            delta = delta * valid
        return delta

    def plan(self, x, valid=None, logits=None, previous=None, width=None):
        """Where a chunk's elements fall on the clock and which samples it emits: the ResamplingPlan that
        compress, decompress and advance read. x (b, l, d) with padding zeroed; previous: the state after the
        chunk before (None: a fresh sequence).

        width: the grid's length M when the caller knows a bound on every row's new samples (1 for one element,
        since Δ <= 1); None reads the largest count from the device."""
        batch, length = x.shape[:2]
        if previous is None:
            previous = self.empty_state(batch, x.device, x.dtype)
        deltas = self.deltas(x, valid, logits)
        times = previous.clock.unsqueeze(-1) + torch.cumsum(deltas, dim=-1)
        end_clock = times[:, -1] if length > 0 else previous.clock
        total = torch.floor(end_clock) if self.causal else torch.floor(end_clock).clamp(min=1.0)
        new_counts = (total - previous.emitted).long()
        finite = True
        if width is None:
            width = 0
            if batch > 0:  # the one host synchronisation of the branch
                width, finite = torch.stack([new_counts.max(), torch.isfinite(end_clock).all().long()]).tolist()
        if not finite:
            raise ValueError(f"Δ is not finite (NaN or Inf) in the resampling branch at rate {self.compression_rate}: "
                             "its input or its selectivity network θ_Δ holds NaN or Inf")
        grid = previous.emitted.unsqueeze(-1) + torch.arange(1, width + 1, device=x.device, dtype=torch.float64)
        sample_valid = torch.arange(width, device=x.device) < new_counts.unsqueeze(-1)
        return ResamplingPlan(previous, deltas, times, grid, sample_valid, new_counts)

    def compress(self, x, plan):
        """x (b, l, d) with padding zeroed -> samples x~ (b, M, d), zero where plan.sample_valid is False."""
        batch, length, _ = x.shape
        K, grid, previous = self.num_neighbors, plan.grid, plan.previous
        if length == 0:  # an empty chunk: nothing to gather (a causal one emits nothing)
            return x.new_zeros(batch, grid.shape[1], x.shape[-1])
        if self.causal:
            # Emitter e_j: the first element whose time reaches grid point j.
            first = torch.searchsorted(plan.times.contiguous(), grid.contiguous(), side="left")
            # Neighbour window e_j-K+1 .. e_j, in coordinates of [K remembered elements, x]: always in range.
            inputs = torch.cat([previous.neighbor_inputs, x], dim=1)
            all_times = torch.cat([previous.neighbor_times, plan.times], dim=1)
            index = first.clamp(max=length - 1).unsqueeze(-1) + K - torch.arange(K, device=x.device)
            in_range = None
        else:
            inputs, all_times = x, plan.times
            index, in_range = nearest_neighbors(plan.times, grid, K)
        neighbors = _rows(inputs, index)  # (b, M, K, d)
        if in_range is not None:
            neighbors = neighbors * in_range.unsqueeze(-1)
        gaps = (grid.unsqueeze(-1) - _rows(all_times, index)).to(x.dtype)
        return self.compression_basis.combine(gaps, neighbors) * plan.sample_valid.unsqueeze(-1)

    def decompress(self, outputs, plan):
        """outputs (b, M, d) from the SSM -> (b, l, d), and the new last_output (b, d)."""
        times, previous = plan.times, plan.previous
        if self.causal:
            latest = torch.floor(times)
            # Row 0 of the table is y~ of the previous chunk's last sample (zero for a fresh sequence).
            table = torch.cat([previous.last_output.unsqueeze(1).to(outputs.dtype), outputs], dim=1)
            index = (latest - previous.emitted.unsqueeze(-1)).long()
            read = _rows(table, index) * (latest > 0).unsqueeze(-1)
            last_output = _rows(table, plan.new_counts)
        else:
            total = (previous.emitted + plan.new_counts).unsqueeze(-1).to(times.dtype)
            # floor(t + 1/2), not torch.round, which rounds ties to even (2.5 -> 2 but 3.5 -> 4).
            latest = torch.minimum(torch.floor(times + 0.5).clamp(min=1.0), total)
            read = _rows(outputs, (latest - 1).long())
            last_output = previous.last_output
        scale = self.decompression_basis((times - latest).to(outputs.dtype))
        return scale * read, last_output

    def advance(self, x, plan, last_output):
        """State after the chunk: last K elements and times, the clock, the emitted count, the last output."""
        K, previous, times = self.num_neighbors, plan.previous, plan.times
        return ResamplingState(
            neighbor_inputs=torch.cat([previous.neighbor_inputs, x], dim=1)[:, -K:],
            neighbor_times=torch.cat([previous.neighbor_times, times], dim=1)[:, -K:],
            clock=times[:, -1] if times.shape[1] > 0 else previous.clock,
            emitted=previous.emitted + plan.new_counts,
            last_output=last_output,
        )
