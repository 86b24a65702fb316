"""serpent_hf.optimize_for_cpu: wide weights column-major, plain projections multiplied by a packed weight in
decoding steps. The model computes the same numbers, follows changes of its weights, trains, copies and saves."""

import copy
import io

import pytest
import torch
from torch import nn

from serpent_hf import SeRpEntForCausalLM, optimize_for_cpu
from serpent_hf.cpu import PackedLinear, packed_products

from .conftest import stepwise_logits, tiny_model


def optimized_model(seed):
    """A tiny model wide enough (hidden 64, d_inner 128) for its projections to be packed."""
    return optimize_for_cpu(tiny_model(seed=seed, hidden_size=64, state_size=8, tie_word_embeddings=True))


@pytest.mark.parametrize("batch", [1, 4])  # the column-major weight (one row), the packed one (several rows)
def test_the_optimized_model_computes_what_the_model_computes(batch, tmp_path):
    reference = tiny_model(seed=4, hidden_size=64, state_size=8, tie_word_embeddings=True)  # the head stays tied
    model = optimize_for_cpu(copy.deepcopy(reference))
    ids = torch.randint(3, 97, (batch, 24))
    with torch.no_grad():
        expected = reference(ids).logits
        stepped, _ = stepwise_logits(model, ids, prefill=5)
        full = model(ids).logits
    packed = [m for m in model.modules() if isinstance(m, PackedLinear)]
    assert packed and all(m.in_features >= 64 and m.out_features >= 64 for m in packed)
    assert all(m.weight.stride() == (1, m.out_features) for m in packed if m.out_features > m.in_features)
    assert model.lm_head.weight is model.model.embeddings.weight  # still tied
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stepped, expected, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(SeRpEntForCausalLM.from_pretrained(tmp_path)(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_the_packed_weight_follows_training_and_the_model_copies_after_decoding():
    model = optimized_model(seed=5)
    ids = torch.randint(3, 97, (4, 16))

    def decode_then_compare(m):
        with torch.no_grad():
            stepped, _ = stepwise_logits(m, ids, prefill=4)
            torch.testing.assert_close(stepped, m(ids).logits, rtol=1e-4, atol=1e-4)

    decode_then_compare(model)  # packs
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(ids, labels=ids).loss
    first.backward()
    optimizer.step()
    assert model(ids, labels=ids).loss < first
    decode_then_compare(model)  # repacks from the new weights
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for other in (twin, torch.load(buffer, weights_only=False)):
        decode_then_compare(other)


def test_only_plain_linears_are_packed():
    model = tiny_model(seed=6, hidden_size=64, state_size=8)
    hooked = model.model.layers[0].branches[0].mixer.in_proj
    hooked.register_forward_hook(lambda module, args, output: output + 1.0)
    optimize_for_cpu(model)
    assert type(hooked) is nn.Linear
    assert type(model.model.layers[0].branches[0].mixer.x_proj) is nn.Linear  # 40 outputs: BLAS does well
    assert isinstance(model.model.layers[1].branches[0].mixer.in_proj, PackedLinear)


@pytest.mark.skipif(packed_products() is None, reason="this torch has no oneDNN packed linear")
def test_a_decoding_step_of_several_rows_multiplies_by_the_packed_weight(monkeypatch):
    model = optimized_model(seed=7)
    calls = []
    pack, multiply = packed_products()
    monkeypatch.setattr("serpent_hf.cpu.packed_products", lambda: (pack, lambda *a: calls.append(1) or multiply(*a)))
    with torch.no_grad():
        stepwise_logits(model, torch.randint(3, 97, (4, 6)), prefill=3)
    assert calls
