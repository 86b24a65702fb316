"""A CPU decoding step reads kept copies of weights (decoding.py): they give the same numbers and follow the weights."""

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from serpent_hf.modeling import MambaMixer, decoding_linear
from serpent_hf.modeling import decoding
from serpent_hf.modeling.decoding import decoding_copy, kept_copies

from .conftest import stepwise_logits, tiny_config, tiny_model


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 16), features=st.integers(1, 40), outputs=st.integers(1, 70), bias=st.booleans(),
       seed=st.integers(0, 1000))
def test_decoding_linear_equals_linear(rows, features, outputs, bias, seed):
    torch.manual_seed(seed)
    linear = nn.Linear(features, outputs, bias=bias)
    x = torch.randn(rows, 1, features)
    with torch.inference_mode():
        torch.testing.assert_close(decoding_linear(linear, x), linear(x), rtol=1e-5, atol=1e-6)


def test_a_copy_is_built_once_and_rebuilt_whenever_one_of_its_parameters_changes():
    module = nn.Linear(4, 3)
    builds = []

    def build(weight, bias):
        builds.append(weight.dtype)
        return weight.sum(0) + bias.sum()

    def copy():
        return decoding_copy(module, "_test_copy", [module.weight, module.bias], build)

    with torch.no_grad():
        copy()
        torch.testing.assert_close(copy(), module.weight.sum(0) + module.bias.sum())
        assert len(builds) == 1  # kept while nothing changes
        module.bias.add_(1.0)  # the second parameter alone changes
        torch.testing.assert_close(copy(), module.weight.sum(0) + module.bias.sum())
        module.load_state_dict(nn.Linear(4, 3).state_dict())
        torch.testing.assert_close(copy(), module.weight.sum(0) + module.bias.sum())
    module.double()
    with torch.no_grad():
        assert copy().dtype == torch.float64
    assert builds == [torch.float32] * 3 + [torch.float64]


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 5), steps=st.integers(1, 6), seed=st.integers(0, 1000))
def test_a_mixer_step_reading_kept_copies_equals_one_that_derives_everything(batch, steps, seed):
    """Aᵀ and the conv taps kept for decoding give the outputs and states of the step that computes them
    from the parameters (the path taken when autograd must reach them). A_log is random, not Mamba's
    initialisation (the same A for every channel), so a transposition error would show."""
    torch.manual_seed(seed)
    mixer = MambaMixer(tiny_config())
    with torch.no_grad():
        mixer.A_log.normal_(0.0, 1.0)
    inputs = torch.randn(steps, batch, mixer.hidden_size)
    kept, derived = mixer.empty_state(batch, "cpu"), mixer.empty_state(batch, "cpu")
    for x in inputs:
        with torch.no_grad():
            output_kept = mixer.step(x, kept)
        output_derived = mixer.step(x, derived).detach()
        torch.testing.assert_close(output_kept, output_derived, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept.ssm, derived.ssm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept.conv, derived.conv, rtol=1e-5, atol=1e-6)
    assert "A_transposed" in kept_copies(mixer) and "taps" in kept_copies(mixer.conv1d)


@pytest.mark.parametrize("rows", [1, 3])  # the transposed copy (one row) and the packed one (several rows)
def test_the_copy_follows_every_change_of_the_weight(rows):
    linear = nn.Linear(8, 32)
    x = torch.randn(rows, 8)
    with torch.no_grad():
        decoding_linear(linear, x)  # builds the copy
        linear.weight.mul_(-2.0)  # an optimiser step or load_state_dict changes the weight in place
        torch.testing.assert_close(decoding_linear(linear, x), linear(x))
        linear.load_state_dict(nn.Linear(8, 32).state_dict())
        torch.testing.assert_close(decoding_linear(linear, x), linear(x))
    linear.double()
    with torch.no_grad():
        assert decoding_linear(linear, x.double()).dtype == torch.float64
        torch.testing.assert_close(decoding_linear(linear, x.double()), linear(x.double()))
    assert list(linear.state_dict()) == ["weight", "bias"]  # never saved with the model


def test_a_model_that_decoded_copies_pickles_and_saves_and_its_copy_decodes_exactly():
    """Copies live beside the modules, not on them: a packed weight has no storage, so deepcopy, pickling and
    torch.save of a model that has decoded would otherwise fail (they did while copies were attributes)."""
    model = tiny_model(seed=4)
    ids = torch.randint(3, 97, (4, 9))
    with torch.no_grad():
        stepwise_logits(model, ids, prefill=3)  # builds packed copies (4 rows)
    assert any("packed_weight" in kept_copies(m) for m in model.modules()) == (decoding.packed_products() is not None)
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (twin, loaded):
        assert not any(kept_copies(m) for m in other.modules())
        with torch.no_grad():
            stepped, _ = stepwise_logits(other, ids, prefill=3)
            torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 2, 5, 16])
def test_each_projection_reads_the_copy_that_is_faster_for_its_rows(rows):
    """Several rows: the packed weight; one row: W' for a wide projection (in_proj, the head), the module itself
    for a narrow one (out_proj, the concat projection). Both give the module's output."""
    wide, narrow = nn.Linear(16, 64), nn.Linear(64, 16)
    with torch.no_grad():
        for linear in (wide, narrow):
            x = torch.randn(rows, 1, linear.in_features)
            torch.testing.assert_close(decoding_linear(linear, x), linear(x), rtol=1e-5, atol=1e-6)
    if rows > 1 and (decoding.packed_products() is not None):
        assert set(kept_copies(wide)) == set(kept_copies(narrow)) == {"packed_weight"}
    elif rows == 1:
        assert set(kept_copies(wide)) == {"transposed_weight"} and not kept_copies(narrow)


def test_decoding_without_packed_products_matches_the_full_forward(monkeypatch):
    """A torch build without oneDNN (no packed products) decodes batches with the transposed copies."""
    monkeypatch.setattr(decoding, "packed_products", lambda: None)
    model = tiny_model(seed=9)
    ids = torch.randint(3, 97, (3, 9))
    with torch.no_grad():
        stepped, _ = stepwise_logits(model, ids, prefill=2)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)
    assert not any("packed_weight" in kept_copies(m) for m in model.modules())


def test_gradients_reach_the_weight_and_the_input():
    """With autograd on, the weight gets its gradient (the copy is bypassed); a frozen weight still passes the
    gradient to the input, also when the copy was built under inference_mode."""
    linear = nn.Linear(6, 10)
    x = torch.randn(4, 6, requires_grad=True)
    decoding_linear(linear, x).sum().backward()
    expected = torch.ones(4, 10).t() @ x.detach()
    torch.testing.assert_close(linear.weight.grad, expected)
    linear.requires_grad_(False)
    with torch.inference_mode():
        decoding_linear(linear, x.detach())
    x.grad = None
    decoding_linear(linear, x).sum().backward()
    torch.testing.assert_close(x.grad, linear.weight.sum(0).expand(4, -1))


def test_generation_with_copies_matches_the_full_forward_after_the_weights_change():
    """A model decodes with its copies, is trained a step, and decodes again: the logits follow the new weights."""
    model = tiny_model(seed=21, compression_rates=[1.0, 0.5])
    ids = torch.randint(3, 97, (2, 10))

    def decode_then_compare():
        with torch.no_grad():
            stepped, _ = stepwise_logits(model, ids, prefill=4)
            torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)

    decode_then_compare()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    decode_then_compare()
    mixers = [m for m in model.modules() if isinstance(m, MambaMixer)]
    assert all({"packed_weight"} <= set(kept_copies(m.in_proj)) and "A_transposed" in kept_copies(m) for m in mixers)


def test_a_model_built_under_inference_mode_decodes_without_copies():
    """Parameters created under inference_mode keep no version counter, so no copy could follow them:
    decoding computes from the parameters and still equals the full forward."""
    ids = torch.randint(3, 97, (2, 9))
    with torch.inference_mode():
        model = tiny_model(seed=5)
        stepped, _ = stepwise_logits(model, ids, prefill=3)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)
        model.lm_head.weight.mul_(0.5)  # an in-place change no version counter records
        stepped, _ = stepwise_logits(model, ids, prefill=3)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)
    assert not any(kept_copies(m) for m in model.modules())


class ScaledLinear(nn.Linear):
    """A Linear subclass with its own forward, as quantised or 8-bit Linears are: its weight does not stand for it."""

    def forward(self, x):
        return 1.5 * super().forward(x)


def add_a_hook_to_an_input_projection(model):
    model.model.layers[0].branches[1].mixer.in_proj.register_forward_hook(lambda module, args, output: output + 0.25)


def replace_the_head_by_a_subclass(model):
    head = ScaledLinear(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.load_state_dict(model.lm_head.state_dict())
    model.lm_head = head


def wrap_projections_in_lora_adapters(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["in_proj", "x_proj", "out_proj"], init_lora_weights=False)
    return get_peft_model(model, config).base_model.model


def add_a_hook_to_a_conv1d(model):
    model.model.layers[1].branches[2].mixer.conv1d.register_forward_hook(lambda module, args, output: output + 1.0)


def wrap_conv1d_in_lora_adapters(model):
    from peft import LoraConfig, get_peft_model

    # peft adapts a depthwise conv only with a rank divisible by its groups (d_inner).
    config = LoraConfig(r=model.config.intermediate_size, target_modules=["conv1d"], init_lora_weights=False)
    adapted = get_peft_model(model, config).base_model.model
    for name, parameter in adapted.named_parameters():
        if "lora_" in name:  # peft's random init barely moves the logits of this small model
            parameter.data.normal_(0.0, 2.0)
    return adapted


@pytest.mark.parametrize("change", [add_a_hook_to_an_input_projection, replace_the_head_by_a_subclass,
                                    wrap_projections_in_lora_adapters, add_a_hook_to_a_conv1d,
                                    wrap_conv1d_in_lora_adapters])
def test_decoding_calls_a_module_that_computes_more_than_its_weight(change):
    """A LoRA adapter (peft), a forward hook or a subclass with its own forward changes what a projection
    or the depthwise conv computes; the forward pass and decoding must both call it, not read its weight
    (kernels, copies), or the change would be dropped without a word."""
    model = tiny_model(seed=6)
    ids = torch.randint(3, 97, (2, 10))
    with torch.no_grad():
        before = model(ids).logits
        model = change(model) or model
        full = model(ids).logits
        stepped, _ = stepwise_logits(model, ids, prefill=4)
    assert (full - before).abs().max().item() > 1e-2  # the change matters
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-4)


def test_decoding_calls_the_projections_while_a_hook_for_every_module_is_registered():
    """A hook registered for every module (register_module_forward_hook) runs on each projection of the full
    forward; decoding calls them too instead of multiplying by copies, so a hook that changes outputs gives the
    same logits both ways."""
    model = tiny_model(seed=8)
    ids = torch.randint(3, 97, (2, 10))

    def nudge_linears(module, args, output):
        return output + 0.01 if isinstance(module, nn.Linear) else output

    handle = nn.modules.module.register_module_forward_hook(nudge_linears)
    try:
        with torch.no_grad():
            full = model(ids).logits
            stepped, _ = stepwise_logits(model, ids, prefill=4)
    finally:
        handle.remove()
    with torch.no_grad():
        assert (model(ids).logits - full).abs().max().item() > 1e-3  # the hook mattered
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-4)
