"""Selective scan: the diagonal linear recurrence at the heart of Mamba, in pure PyTorch.

    h_t = exp(Δ_t · A) ⊙ h_{t-1} + (Δ_t · x_t) ⊗ B_t          (discretised SSM, zero-order hold on A)
    y_t = h_t · C_t + D ⊙ x_t

Glossary (shapes):
    b  batch            l  sequence length
    d  channels (d_inner of the mixer)      n  state size (N)

The state h is laid out (n, d), channels last, although A and mamba-ssm's kernels use (d, n):
every per-step operation (decay, update, readout C·h) then runs over contiguous rows of d
channels instead of reducing over a short axis of n, which is about 2.5x faster on a CPU.
The decay exp(Δ·A) is computed as 2^(Δ·log2(e)·A), as mamba-ssm's kernels do: exp2 is
about twice as fast as exp here.

Why a custom autograd function: writing the recurrence as a Python loop that indexes
`tensor[:, :, t]` makes autograd allocate a full-size zero tensor for every indexed step in
the backward pass, so the backward costs O(L²) (this is what transformers' torch fallback
does). Here the forward loop writes each step into a preallocated time-major buffer and the
backward runs the adjoint recurrence in reverse, so both cost O(L · b · d · n) with one
small kernel launch per step, and the gradients of Δ, x, A, B, C are computed by hand,
chunk by chunk, from recomputed states. Everything runs in float32 (the SSM is sensitive
to rounding).
"""

import math

import torch

LOG2_E = math.log2(math.e)

# Time steps per chunk are chosen so that one chunk of an (l, b, n, d) tensor is about this many
# float32 values (8 MiB): the chunk's decay, states and gradients stay in the CPU caches.
CHUNK_ELEMENTS = 1 << 21


def decay(delta, A_transposed):
    """exp(Δ·A) (..., n, d) from Δ (..., d) and A laid out (n, d), contiguous."""
    return torch.mul((delta * LOG2_E).unsqueeze(-2), A_transposed).exp2_()  # in place: one (.., n, d) buffer


def _chunk_forward(delta, x, A_transposed, B, previous):
    """States of one chunk.  delta, x (T, b, d); B (T, b, n); previous (b, n, d) -> decay, states (T, b, n, d)."""
    decays = decay(delta, A_transposed)
    states = B.unsqueeze(-1) * (delta * x).unsqueeze(-2)  # the drive B_t ⊗ (Δ_t x_t), overwritten by h_t
    # One unbind per chunk: indexing states[t], decay[t] inside the loop costs three selects per step.
    for decay_t, state_t in zip(decays.unbind(0), states.unbind(0)):
        torch.addcmul(state_t, decay_t, previous, out=state_t)
        previous = state_t
    return decays, states


class SelectiveScan(torch.autograd.Function):
    """The scan with its readout, h_t = exp(Δ_t·A) ⊙ h_{t-1} + (Δ_t·x_t) ⊗ B_t,  r_t = h_t · C_t.

    Inputs are time-major: delta, x (l, b, d); A (d, n); B, C (l, b, n); initial (b, n, d).
    Returns the readout r (l, b, d) and the final state (b, n, d).

    Time is cut into chunks. The forward pass keeps only the state entering each chunk; the
    backward pass recomputes one chunk's decay and states from it, runs the adjoint recurrence
    over the chunk and turns it into gradients by multiply-and-reduce (batched matmuls where
    the shapes allow). Memory is O(chunk · b · d · n + l · b · d) instead of O(l · b · d · n),
    and the time per token does not grow with l.
    """

    @staticmethod
    def forward(ctx, delta, x, A, B, C, initial):
        length = delta.shape[0]
        chunk = max(1, CHUNK_ELEMENTS // max(1, initial.numel()))
        readout = delta.new_empty(delta.shape)
        A_transposed = A.t().contiguous()
        entering, state = [], initial
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            entering.append(state)
            _, states = _chunk_forward(delta[start:stop], x[start:stop], A_transposed, B[start:stop], state)
            torch.matmul(C[start:stop].unsqueeze(-2), states, out=readout[start:stop].unsqueeze(-2))
            state = states[-1].clone()
        ctx.chunk = chunk
        ctx.save_for_backward(delta, x, A, B, C, *entering)
        return readout, state.clone() if length == 0 else state

    @staticmethod
    def backward(ctx, grad_readout, grad_final):
        delta, x, A, B, C, *entering = ctx.saved_tensors
        chunk, length = ctx.chunk, delta.shape[0]
        grad_readout = grad_readout.contiguous()
        grad_delta, grad_x = torch.empty_like(delta), torch.empty_like(x)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        A_transposed = A.t().contiguous()
        grad_A_transposed = torch.zeros_like(A_transposed)
        carry = grad_final.contiguous() if grad_final is not None else torch.zeros_like(entering[0])
        for index in range((length + chunk - 1) // chunk - 1, -1, -1):
            start, stop = index * chunk, min(index * chunk + chunk, length)
            previous = entering[index]
            decays, states = _chunk_forward(delta[start:stop], x[start:stop], A_transposed, B[start:stop], previous)
            # Adjoint recurrence: g_t = C_t ⊗ ∂r_t + exp(Δ_{t+1}·A) ⊙ g_{t+1}.
            piece = slice(start, stop)
            grad_states = torch.empty_like(states)
            steps = zip(grad_readout[piece].unsqueeze(-2).unbind(0), C[piece].unsqueeze(-1).unbind(0),
                        decays.unbind(0), grad_states.unbind(0))
            for grad_readout_t, C_t, decay_t, grad_state_t in reversed(list(steps)):
                torch.addcmul(carry, C_t, grad_readout_t, out=grad_state_t)
                carry = decay_t * grad_state_t
            grad_C[piece] = torch.matmul(states, grad_readout[piece].unsqueeze(-1)).squeeze(-1)  # Σ_d h ⊙ ∂r
            grad_scaled_input = torch.matmul(B[piece].unsqueeze(-2), grad_states).squeeze(-2)  # Σ_n B ⊙ g
            scaled_input = delta[piece] * x[piece]
            grad_B[piece] = torch.matmul(grad_states, scaled_input.unsqueeze(-1)).squeeze(-1)  # Σ_d g ⊙ Δx
            # ∂(Δ·A) = g_t ⊙ h_{t-1} ⊙ exp(Δ_t·A); h_{t-1} is the previous state within the chunk.
            grad_exponent = grad_states
            grad_exponent[1:].mul_(states[:-1])
            grad_exponent[0].mul_(previous)
            grad_exponent.mul_(decays)
            grad_A_transposed += (grad_exponent * delta[piece].unsqueeze(-2)).sum(dim=(0, 1))
            grad_delta[piece] = grad_exponent.mul_(A_transposed).sum(-2) + grad_scaled_input * x[piece]
            grad_x[piece] = grad_scaled_input * delta[piece]
        return grad_delta, grad_x, grad_A_transposed.t(), grad_B, grad_C, carry


def selective_scan(x, delta, A, B, C, D, initial_state=None):
    """Reference selective scan.

    x, delta: (b, l, d)  — delta already positive (after softplus) and 0 on skipped steps
    A: (d, n) negative real;  B, C: (b, l, n);  D: (d,)
    initial_state: (b, n, d) or None (zeros)
    Returns y: (b, l, d) and the final state (b, n, d), all float32.
    """
    x, delta, B, C = x.float(), delta.float(), B.float(), C.float()
    batch, length, channels = x.shape
    if initial_state is None:
        initial_state = x.new_zeros(batch, A.shape[-1], channels)

    def time_major(tensor):  # (b, l, ...) -> contiguous (l, b, ...): one time step per memory slab
        return tensor.transpose(0, 1).contiguous()

    readout, final_state = SelectiveScan.apply(
        time_major(delta), time_major(x), A.float(), time_major(B), time_major(C), initial_state.float()
    )
    return readout.transpose(0, 1) + x * D.float(), final_state


def selective_state_update(state, x, delta, A, B, C, D):
    """One step of the recurrence, in place (the contract of mamba-ssm's kernel of the same name,
    with the state laid out (n, d) as everywhere in this module).

    state: (b, n, d) float32, overwritten with the new state;  x, delta: (b, d);  A: (d, n);  B, C: (b, n).
    Returns y: (b, d) float32.
    """
    x, delta = x.float(), delta.float()
    state.mul_(decay(delta, A.t().contiguous()))  # h <- exp(Δ·A) h
    state.addcmul_(B.float().unsqueeze(-1), (delta * x).unsqueeze(-2))  # ... + B ⊗ Δx
    return torch.baddbmm((x * D.float()).unsqueeze(-2), C.float().unsqueeze(-2), state).squeeze(-2)  # C·h + D x
