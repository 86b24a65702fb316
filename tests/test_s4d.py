"""The S4D backend: its convolution kernel is its recurrence, on every path (modeling/s4d.py)."""

import math

import pytest
import torch

from serpent_hf.modeling import S4DMixer
from serpent_hf.modeling.s4d import fft_convolution
from serpent_hf import SeRpEntForCausalLM

from .conftest import cache_of, selectivity_networks, tiny_config


def s4d_mixer(seed=0, bidirectional=False, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(ssm_type="s4d", state_size=8, bidirectional=bidirectional, **overrides)
    mixer = S4DMixer(config).eval()
    with torch.no_grad():  # spread Δ and A away from their initial values so every mode matters
        mixer.log_dt.uniform_(math.log(0.01), math.log(0.5))
        mixer.log_A_real.normal_(math.log(0.5), 0.5)
    return mixer


def recurrence_outputs(mixer, u, direction=0):
    """The SSM part y (b, d, l) by the recurrence, in float64: forward h_t = Ā h_{t-1} + B̄ u_t,
    y_t = 2 Re(C h_t); backward (direction 1) g_t = Ā g_{t+1} + B̄ u_{t+1}, y_t = 2 Re(C g_t)."""
    dtA, B_bar = (value.to(torch.complex128) for value in mixer.discretise())
    A_bar = torch.exp(dtA)
    C = torch.view_as_complex(mixer.C.detach().double())[direction]
    u = u.double()
    state = torch.zeros(u.shape[0], *dtA.shape, dtype=torch.complex128)
    outputs = torch.zeros_like(u)
    length = u.shape[-1]
    times = range(length) if direction == 0 else range(length - 1, -1, -1)
    for t in times:
        if direction == 0:
            state = A_bar * state + B_bar * u[:, :, t, None]
        outputs[:, :, t] = 2 * (C * state).sum(-1).real
        if direction == 1:
            state = A_bar * state + B_bar * u[:, :, t, None]
    return outputs


def test_kernel_is_the_impulse_response_of_the_recurrence():
    mixer = s4d_mixer(seed=1)
    length = 70
    impulse = torch.zeros(1, mixer.hidden_size, length)
    impulse[..., 0] = 1.0
    expected = recurrence_outputs(mixer, impulse)[0]
    torch.testing.assert_close(mixer.kernel(length)[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_discretisation_is_the_exact_zero_order_hold_of_the_continuous_system():
    """Ā and B̄ against Van Loan's block exponential, an independent derivation of the zero-order hold:
    exp([[ΔA, ΔB], [0, 0]]) = [[Ā, B̄], [0, 1]] for h' = A h + B u with u held over the step. The kernel, the
    step and the final state all read `discretise`, so they agree with each other whatever it computes."""
    mixer = s4d_mixer(seed=9)
    with torch.no_grad():
        mixer.B.normal_()  # B = 1 at initialisation would hide a B̄ that forgets to multiply by B
        dtA, B_bar = mixer.discretise()
    A = torch.complex(-torch.exp(mixer.log_A_real.double()), mixer.A_imag.double()).detach()
    dt = torch.exp(mixer.log_dt.double()).detach().unsqueeze(-1).to(A.dtype)
    B = torch.view_as_complex(mixer.B.detach().double())
    block = torch.zeros(*A.shape, 2, 2, dtype=torch.complex128)
    block[..., 0, 0], block[..., 0, 1] = dt * A, dt * B
    exponential = torch.linalg.matrix_exp(block)
    torch.testing.assert_close(torch.exp(dtA).to(torch.complex128), exponential[..., 0, 0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(B_bar.to(torch.complex128), exponential[..., 0, 1], atol=1e-6, rtol=1e-5)


def test_fft_convolution_equals_the_recurrence():
    mixer = s4d_mixer(seed=2)
    u = torch.randn(3, mixer.hidden_size, 90)
    fft = fft_convolution(u, mixer.kernel(90)).double()
    torch.testing.assert_close(fft, recurrence_outputs(mixer, u), atol=2e-5, rtol=1e-5)


def test_bidirectional_kernel_equals_a_forward_plus_a_backward_recurrence():
    mixer = s4d_mixer(seed=3, bidirectional=True)
    u = torch.randn(2, mixer.hidden_size, 64)
    expected = recurrence_outputs(mixer, u, 0) + recurrence_outputs(mixer, u, 1)
    torch.testing.assert_close(fft_convolution(u, mixer.kernel(64)).double(), expected, atol=2e-5, rtol=1e-5)
    # The backward direction reads only later elements: the last output ignores it entirely.
    torch.testing.assert_close(expected[..., -1], recurrence_outputs(mixer, u, 0)[..., -1])


def test_parallel_forward_matches_step_by_step_recurrence():
    mixer = s4d_mixer(seed=4)
    x = torch.randn(2, 50, mixer.hidden_size)
    with torch.no_grad():
        parallel, final = mixer(x, return_state=True)
        state, steps = mixer.empty_state(2, x.device), []
        for t in range(x.shape[1]):
            steps.append(mixer.step(x[:, t], state))
    torch.testing.assert_close(parallel, torch.stack(steps, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.ssm, state.ssm, atol=1e-5, rtol=1e-5)


def test_continuing_from_a_state_equals_one_pass():
    mixer = s4d_mixer(seed=5)
    x = torch.randn(2, 61, mixer.hidden_size)
    with torch.no_grad():
        whole, whole_state = mixer(x, return_state=True)
        first, state = mixer(x[:, :25], return_state=True)
        second, state = mixer(x[:, 25:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.ssm, whole_state.ssm, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_invalid_elements_are_identity_steps(bidirectional):
    # Left padding, right filler and holes: each row's outputs at its valid elements, and its final
    # state, equal those of the valid elements alone.
    mixer = s4d_mixer(seed=6, bidirectional=bidirectional)
    x = torch.randn(3, 40, mixer.hidden_size)
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[0, :9] = False
    valid[1, 31:] = False
    valid[2, ::3] = False
    with torch.no_grad():
        masked, state = mixer(x, valid, return_state=not bidirectional)
        for row in range(3):
            alone, alone_state = mixer(x[row : row + 1, valid[row]], return_state=not bidirectional)
            torch.testing.assert_close(masked[row, valid[row]], alone[0], atol=1e-5, rtol=1e-5)
            if not bidirectional:
                torch.testing.assert_close(state.ssm[row], alone_state.ssm[0], atol=1e-5, rtol=1e-5)


def test_bidirectional_s4d_refuses_recurrent_use():
    mixer = s4d_mixer(bidirectional=True)
    x = torch.randn(1, 5, mixer.hidden_size)
    with pytest.raises(NotImplementedError, match="bidirectional"):
        mixer(x, return_state=True)
    with pytest.raises(NotImplementedError, match="bidirectional"):
        mixer.step(x[:, 0], mixer.empty_state(1, x.device))


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_initialisation_follows_s4d(init):
    config = tiny_config(ssm_type="s4d", state_size=16, s4d_init=init, s4d_dt_min=0.002, s4d_dt_max=0.05)
    torch.manual_seed(0)
    mixer = S4DMixer(config)
    n = torch.arange(8, dtype=torch.float32)
    expected = math.pi * n if init == "lin" else 16 / math.pi * (16 / (2 * n + 1) - 1)
    torch.testing.assert_close(mixer.A_imag[0], expected)
    torch.testing.assert_close(-torch.exp(mixer.log_A_real), torch.full_like(mixer.log_A_real, -0.5))
    dt = torch.exp(mixer.log_dt)
    assert bool((dt >= 0.002 - 1e-7).all()) and bool((dt <= 0.05 + 1e-7).all())
    torch.testing.assert_close(torch.view_as_complex(mixer.B), torch.ones(32, 8, dtype=torch.complex64))


def test_every_s4d_parameter_gets_a_gradient():
    mixer = s4d_mixer(seed=7).train()
    mixer(torch.randn(2, 30, mixer.hidden_size))[0].square().sum().backward()
    for name, parameter in mixer.named_parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("rates", [[1.0], [1.0, 0.5, 0.25]])
def test_causal_s4d_language_model_generates_exactly_its_forward(rates):
    # S4D inside SeRpEnt's causal branches: prefill + one token at a time == one parallel pass.
    torch.manual_seed(8)
    model = SeRpEntForCausalLM(tiny_config(ssm_type="s4d", state_size=8, compression_rates=rates)).eval()
    with torch.no_grad():
        for network in selectivity_networks(model.model):
            network.weight.normal_(0.0, 1.0)
    ids = torch.randint(3, 97, (2, 30))
    with torch.no_grad():
        expected = model(ids).logits
        prefill = model(ids[:, :12], use_cache=True)
        cache, logits = cache_of(prefill), [prefill.logits]
        for t in range(12, 30):
            step = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = cache_of(step)
            logits.append(step.logits)
    torch.testing.assert_close(torch.cat(logits, 1), expected, atol=1e-4, rtol=1e-4)
