"""θ_Δ, the selectivity network: a linear map from an element to a logit, in float64 (DESIGN.md section 1.1).

delta_source = "hidden": each compressed branch owns one (P = 1), reading its block's normalised input. float64
makes the batched and the one-token evaluation agree to ~1e-16, far below the 2^-20 grid Δ is rounded to.

delta_source = "embedding": one module holds the networks of every compressed branch of every layer,
p = 1..P, all reading the same input: the token embeddings e_l (the input of the first block), in exact
arithmetic:

    u_l      = e_l / σ_e                                    embedding in units of its initial spread
    s_l^p    = w_p · u_l                                    per-token score
    logit_l^p = b_p + (1/W) · (s_l^p + s_{l-1}^p + ... + s_{l-W+1}^p)     causal window of W tokens

Scores before the first token and on padding are 0, so a left-padded row, a row alone and a
row continued chunk by chunk see the same windows.

Why exact: u and w are rounded to fixed-point grids (straight-through) before the product, u to
multiples of 2^-10 within ±2^7 and w to multiples of 2^-16 within ±2, so every product u_i·w_i is
an integer number of 2^-26 below 2^34 of them, and a window sum of d·W <= 2^18 such products
stays below 2^53: float64 holds every partial sum exactly, so the score is the same bits
whatever order a matrix product or a one-token step adds them in, for any batch shape,
padding or BLAS. The clock, the grid and every emission are then a function of the token ids
and the parameters alone, planned once per forward pass before the first block.

What is left inexact is the float64 sigmoid applied to that exact logit: vectorised and scalar
exp may differ in the last bit, so Δ could round to a different 2^-20 step when the value lies
within about 2^-32 of a rounding boundary (about 1e-10 per element).

Shapes: b batch, l length, d hidden size, P networks (layers × compressed branches), W window.
"""

import torch
import torch.nn.functional as F
from torch import nn

INPUT_QUANTUM, INPUT_BOUND = 2.0**-10, 2.0**7
WEIGHT_QUANTUM, WEIGHT_BOUND = 2.0**-16, 2.0
EXACT_TERMS = 2**18  # d·W products per logit; see the module docstring


def fixed_point(x, quantum, bound):
    """x rounded to a multiple of `quantum` within ±bound, straight-through (the gradient of clamp)."""
    x = x.clamp(-bound, bound)
    return x + (torch.round(x / quantum) * quantum - x).detach()


class SelectivityNetwork(nn.Module):
    """P networks θ_Δ: weight (P, d), bias (P,). With embedding_std (delta_source "embedding") the inputs are token
    embeddings of that initial spread and every logit is exact (module docstring); without, plain float64."""

    def __init__(self, hidden_size, num_networks=1, window=1, embedding_std=None, bias_init=-3.0):
        super().__init__()
        if embedding_std is not None and hidden_size * window > EXACT_TERMS:
            raise ValueError(
                f"delta_source='embedding' sums hidden_size × delta_window = {hidden_size * window} products per "
                f"logit; exact float64 arithmetic allows at most {EXACT_TERMS}"
            )
        self.weight = nn.Parameter(torch.empty(num_networks, hidden_size))
        self.bias = nn.Parameter(torch.empty(num_networks))
        self.window = window
        self.input_scale = None if embedding_std is None else 1.0 / embedding_std
        self.bias_init = bias_init
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                self.get_parameter(name).copy_(value)

    def initial_parameters(self):
        # As the hidden mode's θ_Δ: its input has unit scale there too (RMS-normalised). The negative
        # bias starts each branch near its nominal rate (sigmoid(-3) ≈ 0.05).
        return {"weight": torch.randn_like(self.weight) * 0.02, "bias": torch.full_like(self.bias, self.bias_init)}

    def empty_state(self, batch_size, device):
        """Scores of the last W-1 tokens (b, W-1, P) float64, zero before the start; None for W = 1."""
        if self.window == 1:
            return None
        return torch.zeros(batch_size, self.window - 1, self.weight.shape[0], device=device, dtype=torch.float64)

    def scores(self, embeddings, valid=None):
        """embeddings (..., d) -> s (..., P) float64, exact with an input scale (module docstring); 0 where valid
        is False."""
        u, weight = embeddings.double(), self.weight.double()
        if self.input_scale is not None:  # both on their fixed-point grids: every product exact
            u = fixed_point(u * self.input_scale, INPUT_QUANTUM, INPUT_BOUND)
            weight = fixed_point(weight, WEIGHT_QUANTUM, WEIGHT_BOUND)
        if valid is not None:
            u = u * valid.unsqueeze(-1)
        return F.linear(u, weight)

    def forward(self, embeddings, valid=None, state=None, decoding_step=False):
        """embeddings (b, l, d), valid (b, l) or None, state from the previous chunk or None
        -> logits (b, l, P) float64 and the new state (None for W = 1).

        With decoding_step=True: one token (b, d) -> logits (b, P) and `state`, advanced in place (`step`). Decoding calls
        the module, not `step`, so that hooks on it run (accelerate's offloading loads the weights in one)."""
        if decoding_step:
            return self.step(embeddings, state), state
        return self.window_logits(self.scores(embeddings, valid), state)

    def window_logits(self, scores, state):
        """scores (b, l, P) of new tokens, state of the tokens before (None: a fresh sequence)
        -> logits (b, l, P) and the state after them (None for W = 1)."""
        if self.window == 1:
            return scores + self.bias.double(), None
        previous = self.empty_state(scores.shape[0], scores.device) if state is None else state
        history = torch.cat([previous, scores], dim=1)  # (b, W-1 + l, P)
        # A sum of W exact integers is exact in any order; unfold keeps it to W terms (a running
        # cumsum over the whole sequence could outgrow float64's exact range).
        window_sum = history.unfold(1, self.window, 1).sum(-1)  # (b, l, P)
        return self.bias.double() + window_sum / self.window, history[:, -(self.window - 1) :]

    def step(self, embeddings, state):
        """One token: embeddings (b, d) -> logits (b, P); `state` (or None for W = 1) advanced in place (a captured
        CUDA graph keeps pointing at it)."""
        logits, new_state = self.window_logits(self.scores(embeddings).unsqueeze(1), state)
        if state is not None:
            state.copy_(new_state)
        return logits[:, 0]
