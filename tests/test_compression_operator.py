"""The "linear" compression operator (compression_operator, benchmarks/README.md's operator arm):
A(δ) = Σ_g φ_g(δ) W_g + diag(b) mixes the K neighbours across channels.

It contains the per-channel gate as the case of diagonal W_g; it keeps causality and decodes
exactly like the gate.
"""

import pytest
import torch

from serpent_hf.modeling import SelectiveResampler

from .conftest import stepwise_logits, tiny_model


def resampler_pair(seed, causal, hidden=8, neighbors=3, basis=4):
    """A gate resampler and a linear one whose W_g are diag(the gate's g-th column): the same map."""
    torch.manual_seed(seed)
    gate = SelectiveResampler(hidden, 0.5, neighbors, basis, causal=causal, compression_operator="gate")
    linear = SelectiveResampler(hidden, 0.5, neighbors, basis, causal=causal, compression_operator="linear")
    with torch.no_grad():
        gate.compression_basis.weight.normal_()
        gate.selectivity.weight.normal_(0.0, 1.0)
        state = gate.state_dict()
        # W_g = diag(w_g): weight[c, g, c] = the gate's weight[c, g].
        state["compression_basis.weight"] = torch.diag_embed(state["compression_basis.weight"].T).permute(1, 0, 2)
        linear.load_state_dict(state)
    return gate, linear


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_diagonal_matrices_give_the_gate(seed, causal):
    gate, linear = resampler_pair(seed, causal)
    x = torch.randn(2, 40, 8)
    with torch.no_grad():
        plan = gate.plan(x)
        expected = gate.compress(x, plan)
        mixed = linear.compress(x, plan)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)


def test_off_diagonal_entries_mix_channels():
    gate, linear = resampler_pair(0, causal=True)
    x = torch.randn(1, 40, 8)
    x[..., 0] = 0.0  # channel 0 is silent in the input: only a map across channels can write it
    with torch.no_grad():
        linear.compression_basis.weight[0, :, 1] = 1.0
        plan = gate.plan(x)
        gated, mixed, valid = gate.compress(x, plan), linear.compress(x, plan), plan.sample_valid
    assert gated[valid][:, 0].abs().max() == 0
    assert mixed[valid][:, 0].abs().min() > 0


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_a_linear_operator_model_decodes_its_forward_pass_and_is_causal(delta_source):
    model = tiny_model(seed=3, num_hidden_layers=3, compression_operator="linear", delta_source=delta_source)
    with torch.no_grad():
        for layer in model.model.layers:
            for branch in layer.branches:
                if branch.resampler is not None:
                    branch.resampler.compression_basis.weight.normal_(0.0, 0.3)
        ids = torch.randint(3, 97, (2, 120))
        full = model(ids).logits
        stepped, _ = stepwise_logits(model, ids, prefill=17)
        changed = ids.clone()
        changed[:, 80:] = torch.randint(3, 97, (2, 40))
        prefix = model(changed).logits[:, :80]
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prefix, full[:, :80], rtol=0, atol=0)


def test_the_linear_operator_has_g_d_squared_weights_per_compressed_branch():
    gate = tiny_model(compression_operator="gate")
    linear = tiny_model(compression_operator="linear")
    count = lambda model: sum(p.numel() for p in model.parameters())
    config = linear.config
    compressed = sum(rate < 1.0 for rate in config.compression_rates) * config.num_hidden_layers
    extra = compressed * config.num_basis * config.hidden_size * (config.hidden_size - 1)
    assert count(linear) - count(gate) == extra
