"""Decoding calls every layer as a user would (DESIGN.md section 4): one decoding path per module, no weight
copies, no special cases. Adapters, hooks, subclasses, inference mode, weights changed between two decodes, and
deepcopy or saving after decoding all give the logits of the full forward pass."""

import ast
import copy
import io
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import serpent_hf.modeling
from serpent_hf.modeling import BlockOutput, BranchOutput, MambaMixer

from .conftest import stepwise_logits, tiny_config, tiny_model


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 5), steps=st.integers(1, 6), seed=st.integers(0, 1000))
def test_a_mixer_step_equals_the_mixer_forward_pass(batch, steps, seed):
    """Steps one element at a time give the outputs and the final state of the parallel pass. A_log is random,
    not Mamba's initialisation (the same A for every channel), so a transposition error would show."""
    torch.manual_seed(seed)
    mixer = MambaMixer(tiny_config())
    with torch.no_grad():
        mixer.A_log.normal_(0.0, 1.0)
        inputs = torch.randn(batch, steps, mixer.hidden_size)
        full, final = mixer(inputs, return_state=True)
        state = mixer.empty_state(batch, "cpu")
        stepped = torch.stack([mixer(inputs[:, t], state=state, decoding_step=True) for t in range(steps)], dim=1)
    torch.testing.assert_close(stepped, full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.ssm, final.ssm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state.conv, final.conv, rtol=1e-5, atol=1e-6)


def test_a_decoding_step_returns_what_the_forward_pass_returns():
    """A block and each branch return the same type from a step as from a forward pass, and a step's statistics
    (Δ, new samples) are the forward pass's at that position."""
    model = tiny_model(seed=11, delta_source="hidden")
    block = model.model.layers[0]
    torch.manual_seed(0)
    x = torch.randn(3, 12, model.config.hidden_size)
    with torch.no_grad():
        full = block(x, return_state=True)
        state = block.empty_state(3, x.device)
        steps = [block(x[:, t], state=state, decoding_step=True) for t in range(12)]
    assert type(full) is BlockOutput and all(type(step) is BlockOutput for step in steps)
    assert all(type(branch(x[:, 0], state=s, decoding_step=True, return_state=True)) is BranchOutput
               for branch, s in zip(block.branches, block.empty_state(3, x.device)))
    torch.testing.assert_close(torch.stack([step.hidden_states for step in steps], 1), full.hidden_states,
                               rtol=1e-4, atol=1e-5)
    for index in range(len(block.branches)):
        deltas = torch.stack([step.deltas[:, index] for step in steps], dim=1)
        torch.testing.assert_close(deltas, full.deltas[:, index], rtol=0, atol=0)
        counts = sum(step.compressed_lengths[:, index] for step in steps)
        assert torch.equal(counts, full.compressed_lengths[:, index])


def test_low_level_operations_import_nothing_above_them():
    """modeling/'s layering (DESIGN.md section 4): scan.py imports no other module of the package, kernels.py only
    scan.py, and nothing in modeling/ imports transformers or serpent_hf."""
    folder = Path(serpent_hf.modeling.__file__).parent

    def imports(name):
        tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    assert not {name for name in imports("scan.py") if name.startswith(".")}
    assert {name for name in imports("kernels.py") if name.startswith(".")} == {".scan"}
    for path in folder.glob("*.py"):
        assert not {n for n in imports(path.name) if n.split(".")[0] in ("transformers", "serpent_hf")}, path.name


def test_a_model_that_decoded_pickles_and_saves_and_its_copy_decodes_exactly():
    """Deepcopy, pickling and torch.save of a model that has decoded work, and the copies decode exactly."""
    model = tiny_model(seed=4)
    ids = torch.randint(3, 97, (4, 9))
    with torch.no_grad():
        stepwise_logits(model, ids, prefill=3)
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for other in (twin, loaded):
        with torch.no_grad():
            stepped, _ = stepwise_logits(other, ids, prefill=3)
            torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)


def test_generation_matches_the_full_forward_after_the_weights_change():
    """A model decodes, is trained a step, and decodes again: the logits follow the new weights."""
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


def test_a_model_built_under_inference_mode_decodes_exactly():
    """Parameters created under inference_mode (no version counters), changed in place: decoding follows them."""
    ids = torch.randint(3, 97, (2, 9))
    with torch.inference_mode():
        model = tiny_model(seed=5)
        stepped, _ = stepwise_logits(model, ids, prefill=3)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)
        model.lm_head.weight.mul_(0.5)  # an in-place change no version counter records
        stepped, _ = stepwise_logits(model, ids, prefill=3)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)


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
    (kernels), or the change would be dropped without a word."""
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
    forward; decoding calls them too, so a hook that changes outputs gives the same logits both ways."""
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
