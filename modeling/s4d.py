"""S4D (Gu, Gupta, Goel & Ré, 2022, "On the Parameterization and Initialization of Diagonal State
Space Models"): the SSM a branch runs for Long Range Arena.

Every channel is its own diagonal complex SSM with n = N/2 modes; each mode stands for a
conjugate pair, whose other half is implied (hence the factor 2 and the real part):

    A  = -exp(log_A_real) + i·A_imag                     (d, n)   continuous, Re A < 0
    Δ  = exp(log_dt)                                     (d,)     step size
    Ā  = exp(ΔA),   B̄ = (exp(ΔA) - 1) / A · B                     zero-order hold
    h_t = Ā ⊙ h_{t-1} + B̄ u_t,   y_t = 2·Re(Σ_n C_n h_{t,n}) + D u_t        recurrent form
    K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l),   y = K * u + D u                        convolution form

The kernel is a Vandermonde product (the powers Ā^l) and the convolution runs as an FFT of
length 2L, which makes it linear, not circular. Starting from a state h_0 adds
2·Re(Σ_n C_n Ā_n^(t+1) h_0,n) to y_t, so a cached continuation also runs in parallel.

Bidirectional (config.bidirectional, as S4's `bidirectional=True` on LRA): a second C gives a
backward kernel K← that reads strictly later elements, so the current one enters once:

    y_t = Σ_{s<=t} K→_{t-s} u_s + Σ_{s>t} K←_{s-t-1} u_s + D u_t

The layer is S4's block without its norm and residual, which the SeRpEnt block provides:

    out = GLU(W · dropout(GELU(y)) + b)          W: (2d, d), GLU(a, g) = a ⊙ sigmoid(g)

Initial values: S4D-Lin A_n = -1/2 + iπn, or S4D-Inv A_n = -1/2 + i(N/π)(N/(2n+1) - 1),
n = 0..N/2-1; B = 1; C complex standard normal; D standard normal; Δ log-uniform in
[s4d_dt_min, s4d_dt_max].

Invalid elements (`valid` False) are identity steps, as in the Mamba mixer: the valid elements
of each row are gathered to the front (stably, so in order), the SSM runs over them as one
contiguous sequence, and its outputs are scattered back to their positions. Left padding, the
trailing filler of a compressed row or a hole in the middle all leave the state untouched.

Glossary (shapes):
    b batch, l length, d channels (hidden_size), n = N/2 complex modes (N = state_size),
    c kernel directions (1, or 2 when bidirectional)
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .state import S4DState


def s4d_imaginary_parts(state_size, init):
    """Im A_n for n = 0..N/2-1: S4D-Lin (πn) or S4D-Inv ((N/π)(N/(2n+1) - 1))."""
    n = torch.arange(state_size // 2, dtype=torch.float32)
    if init == "lin":
        return math.pi * n
    return state_size / math.pi * (state_size / (2 * n + 1) - 1)


def fft_convolution(u, kernel):
    """u (b, d, l) and kernel (c, d, l) -> y (b, d, l) without the D term.

    c = 1: y_t = Σ_{s<=t} K_{t-s} u_s.  c = 2: plus Σ_{s>t} K←_{s-t-1} u_s. Both kernels share one
    FFT of length 2l: K← is placed reversed at the end, i.e. at the negative lags -1, -2, ...
    """
    length = u.shape[-1]
    if kernel.shape[0] == 2:
        kernel = F.pad(kernel[0], (0, length)) + F.pad(kernel[1].flip(-1), (length, 0))  # (d, 2l)
    else:
        kernel = kernel[0]
    kernel_f = torch.fft.rfft(kernel, n=2 * length)
    u_f = torch.fft.rfft(u, n=2 * length)
    return torch.fft.irfft(u_f * kernel_f, n=2 * length)[..., :length]


def _powers(dtA, exponents):
    """Ā^e = exp(ΔA·e) for dtA (d, n) and exponents (l,) -> (d, n, l): the Vandermonde matrix."""
    return torch.exp(dtA.unsqueeze(-1) * exponents.to(dtA.real.dtype))


class S4DMixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.state_size = config.state_size
        self.bidirectional = config.bidirectional
        self.config = config
        channels, modes = config.hidden_size, config.state_size // 2
        directions = 2 if config.bidirectional else 1
        # Complex parameters are stored as (..., 2) real views: safetensors and optimisers see real tensors.
        self.log_dt = nn.Parameter(torch.empty(channels))
        self.log_A_real = nn.Parameter(torch.empty(channels, modes))
        self.A_imag = nn.Parameter(torch.empty(channels, modes))
        self.B = nn.Parameter(torch.empty(channels, modes, 2))
        self.C = nn.Parameter(torch.empty(directions, channels, modes, 2))
        self.D = nn.Parameter(torch.empty(channels))
        self.dropout = nn.Dropout(config.dropout)
        self.output_linear = nn.Linear(channels, 2 * channels)
        with torch.no_grad():
            for name, value in self.initial_parameters().items():
                self.get_parameter(name).copy_(value)

    def initial_parameters(self):
        """S4D-Lin or S4D-Inv A, B = 1, complex normal C, normal D, log-uniform Δ."""
        config = self.config
        channels, modes = self.log_A_real.shape
        log_dt = torch.rand(channels) * (math.log(config.s4d_dt_max) - math.log(config.s4d_dt_min))
        return {
            "log_dt": log_dt + math.log(config.s4d_dt_min),
            "log_A_real": torch.full((channels, modes), math.log(0.5)),
            "A_imag": s4d_imaginary_parts(self.state_size, config.s4d_init).expand(channels, -1).clone(),
            "B": torch.view_as_real(torch.ones(channels, modes, dtype=torch.complex64)).clone(),
            "C": torch.view_as_real(torch.randn(*self.C.shape[:-1], dtype=torch.complex64)).clone(),
            "D": torch.randn(channels),
        }

    def recurrence_parameters(self):
        """Δ, A and B: S4 trains them with a smaller learning rate and no weight decay."""
        return [self.log_dt, self.log_A_real, self.A_imag, self.B]

    def empty_state(self, batch_size, device, dtype=torch.float32):
        modes = self.state_size // 2
        return S4DState(ssm=torch.zeros(batch_size, self.hidden_size, modes, device=device, dtype=torch.complex64))

    def discretise(self):
        """ΔA (d, n) and B̄ = (exp(ΔA) - 1)/A · B (d, n), complex64 (zero-order hold)."""
        A = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())
        dtA = torch.exp(self.log_dt.float()).unsqueeze(-1) * A
        return dtA, torch.expm1(dtA) / A * torch.view_as_complex(self.B.float())

    def kernel(self, length):
        """K (c, d, l): K_l = 2·Re(Σ_n C_n B̄_n Ā_n^l) for l = 0..length-1."""
        dtA, B_bar = self.discretise()
        vandermonde = _powers(dtA, torch.arange(length, device=dtA.device))
        C = torch.view_as_complex(self.C.float())
        return 2 * torch.einsum("cdn,dnl->cdl", C * B_bar, vandermonde).real

    def _output(self, y, dtype):
        """GLU(W · dropout(GELU(y)) + b): (..., d) -> (..., d)."""
        return F.glu(self.output_linear(self.dropout(F.gelu(y.to(dtype)))), dim=-1)

    def forward(self, hidden_states, valid=None, state=None, return_state=False, decoding_step=False):
        """hidden_states (b, l, d); valid (b, l) bool or None; state: S4DState or None.

        Returns (b, l, d) and the final S4DState (None unless return_state).
        With decoding_step=True: one element (b, d) -> (b, d), `state` advanced in place (`step`; a call, so
        that hooks on the mixer run) for the rows where valid (b,) is True (all without it).
        """
        if decoding_step:
            return self.step(hidden_states, state, valid)
        if self.bidirectional and (state is not None or return_state):
            raise NotImplementedError(
                "a bidirectional S4D reads later elements, so it has no recurrent state to return or continue "
                "from; run it on whole sequences with use_cache=False"
            )
        batch, length, _ = hidden_states.shape
        if state is None and return_state:
            state = self.empty_state(batch, hidden_states.device)
        if length == 0:
            return hidden_states.new_zeros(batch, 0, self.hidden_size), state
        u = hidden_states.float()
        if valid is not None:
            # Valid elements first, in order: `order` (b, l) maps compact position -> original position.
            order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
            counts = valid.sum(dim=1)
            compact_valid = torch.arange(length, device=u.device) < counts.unsqueeze(-1)
            u = u.gather(1, order.unsqueeze(-1).expand_as(u)) * compact_valid.unsqueeze(-1)
        u = u.transpose(1, 2)  # (b, d, l): the FFT runs over the last axis
        y = fft_convolution(u, self.kernel(length)) + u * self.D.float().unsqueeze(-1)
        if state is not None:
            dtA, _ = self.discretise()
            C = torch.view_as_complex(self.C.float())[0]
            from_state = _powers(dtA, torch.arange(1, length + 1, device=u.device))  # Ā^(t+1)
            y = y + 2 * torch.einsum("dn,bdn,dnl->bdl", C, state.ssm, from_state).real
        y = y.transpose(1, 2)
        if valid is not None:
            y = torch.zeros_like(y).scatter(1, order.unsqueeze(-1).expand_as(y), y)
        out = self._output(y, hidden_states.dtype)
        if not return_state:
            return out, None
        return out, S4DState(ssm=self._final_state(u, valid, state))

    def _final_state(self, u, valid, state):
        """h after each row's last valid element: Σ_t Ā^(c-1-t) B̄ u_t + Ā^c h_0 over its c valid elements.

        u (b, d, l) compact (valid first). Rolling each row so that its valid elements end at l-1 makes
        the powers Ā^(l-1-t) the same for every row, one Vandermonde matrix for the batch.
        """
        batch, _, length = u.shape
        counts = torch.full((batch,), length, device=u.device) if valid is None else valid.sum(dim=1)
        shift = (torch.arange(length, device=u.device) + counts.unsqueeze(-1)) % length  # (b, l)
        right_aligned = u.gather(2, shift.unsqueeze(1).expand_as(u))
        dtA, B_bar = self.discretise()
        to_end = _powers(dtA, torch.arange(length - 1, -1, -1, device=u.device))
        driven = torch.einsum("bdl,dnl->bdn", right_aligned.to(to_end.dtype), to_end) * B_bar
        carried = torch.exp(dtA * counts.view(-1, 1, 1).to(dtA.real.dtype)) * state.ssm
        return driven + carried

    def step(self, hidden_states, state, valid=None):
        """One element.  hidden_states (b, d) -> (b, d); `state` (S4DState) is advanced in place, except in rows where
        valid (b,) is False (their output is not meaningful)."""
        if self.bidirectional:
            raise NotImplementedError("a bidirectional S4D reads later elements: it cannot run one step at a time")
        dtA, B_bar = self.discretise()
        u = hidden_states.float()
        advanced = state.ssm * torch.exp(dtA) + B_bar * u.unsqueeze(-1)
        state.ssm.copy_(advanced if valid is None else torch.where(valid.view(-1, 1, 1), advanced, state.ssm))
        C = torch.view_as_complex(self.C.float())[0]
        y = 2 * (C * state.ssm).sum(-1).real + self.D.float() * u
        return self._output(y, hidden_states.dtype)
