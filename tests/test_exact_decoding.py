"""Exact decoding at the depth and length of a real model (DESIGN.md section 3), delta_source = "embedding".

Four layers, 2,000+ tokens, weights three times as sharp as at init: every branch of every layer
emits at exactly the same positions whether the sequence is read in one pass, prefilled and then
stepped token by token, continued chunk by chunk, or left-padded in a batch, and the logits agree
within float tolerance. With delta_source = "hidden" the same comparison drifts (θ_Δ reads hidden
states that the two paths round differently): `benchmarks/decoding_drift.py` measures how often.
"""

import pytest
import torch

from .conftest import cache_of, tiny_model

LENGTH = 2000


def sharp_model(seed, delta_source="embedding", layers=4):
    """A 4-layer model with θ_Δ far from its init and every projection in its blocks scaled 3x (as sharp as a
    trained model): the fixture's own sharpening (conftest.LAYER_WEIGHT_GAIN), with an untied head."""
    return tiny_model(seed=seed, num_hidden_layers=layers, delta_source=delta_source)


def emitted_by_forward(model, ids, attention_mask=None):
    """floor(t_l) of every compressed branch: (layers, batch, compressed branches, length) int64, from one pass."""
    deltas = model(ids, attention_mask=attention_mask, output_deltas=True).deltas  # (layers, b, branches, l)
    compressed = [index for index, rate in enumerate(model.config.compression_rates) if rate < 1.0]
    return torch.floor(deltas[:, :, compressed].cumsum(-1)).long()


def emitted_by_steps(model, ids, prefill):
    """The same, read from the cache after a prefill of `prefill` tokens and after every following one-token step."""
    out = model(ids[:, :prefill], use_cache=True, output_deltas=True)
    compressed = [index for index, rate in enumerate(model.config.compression_rates) if rate < 1.0]
    pieces = [torch.floor(out.deltas[:, :, compressed].cumsum(-1)).long()]
    cache, logits = cache_of(out), [out.logits]
    for position in range(prefill, ids.shape[1]):
        step = model(ids[:, position : position + 1], past_key_values=cache, use_cache=True)
        logits.append(step.logits)
        counts = [[state.resampling.emitted for state in layer if state.resampling is not None]
                  for layer in cache.layer_states]
        pieces.append(torch.tensor([[c.tolist() for c in layer] for layer in counts], dtype=torch.long).permute(0, 2, 1).unsqueeze(-1))
    return torch.cat(pieces, dim=-1), torch.cat(logits, dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_every_emission_of_a_deep_model_is_the_same_in_the_forward_pass_and_in_decoding(seed):
    model = sharp_model(seed)
    torch.manual_seed(100 + seed)
    ids = torch.randint(3, 97, (2, LENGTH))
    with torch.no_grad():
        forward_emissions = emitted_by_forward(model, ids)
        full = model(ids).logits
        step_emissions, stepped = emitted_by_steps(model, ids, prefill=300)
    assert torch.equal(step_emissions, forward_emissions)
    assert forward_emissions[..., -1].min() > 0.25 * LENGTH  # the branches did compress and emit throughout
    torch.testing.assert_close(stepped, full, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_chunked_continuation_and_left_padding_emit_where_one_pass_does():
    model = sharp_model(seed=2)
    torch.manual_seed(7)
    ids = torch.randint(3, 97, (1, LENGTH))
    with torch.no_grad():
        forward_emissions = emitted_by_forward(model, ids)
        full = model(ids).logits
        # Chunks of uneven sizes, each continuing the cache of the one before.
        compressed = [i for i, rate in enumerate(model.config.compression_rates) if rate < 1.0]
        cache, clock, emissions, logits, start = None, 0.0, [], [], 0
        for size in (1, 7, 293, 4, 1024, LENGTH - 1329):
            out = model(ids[:, start : start + size], past_key_values=cache, use_cache=True, output_deltas=True)
            times = clock + out.deltas[:, :, compressed].cumsum(-1)  # exact: every Δ is a multiple of 2^-20
            emissions.append(torch.floor(times).long())
            cache, clock, start = cache_of(out), times[..., -1:], start + size
            logits.append(out.logits)
        # The same row, left-padded next to another row of different content.
        pad = 37
        other = torch.randint(3, 97, (1, LENGTH + pad))
        batch = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], 1), other])
        mask = torch.ones_like(batch)
        mask[0, :pad] = 0
        padded_emissions = emitted_by_forward(model, batch, mask)[:, :1, :, pad:]
        padded_logits = model(batch, attention_mask=mask).logits[:1, pad:]
    assert torch.equal(torch.cat(emissions, dim=-1), forward_emissions)
    assert torch.equal(padded_emissions, forward_emissions)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(padded_logits, full, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_greedy_generation_with_the_cache_equals_generation_without_it_over_500_tokens():
    model = sharp_model(seed=3)
    torch.manual_seed(11)
    prompt = torch.randint(3, 97, (1, 200))
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=500, min_new_tokens=500, do_sample=False)
        uncached = model.generate(prompt, max_new_tokens=500, min_new_tokens=500, do_sample=False, use_cache=False)
    assert cached.shape[1] == 700
    assert torch.equal(cached, uncached)


def test_embedding_window_decodes_exactly():
    """delta_window > 1: the window of θ_Δ scores carried in the cache gives the forward pass's clock."""
    model = tiny_model(seed=4, num_hidden_layers=4, delta_window=4)
    ids = torch.randint(3, 97, (2, 400))
    with torch.no_grad():
        forward_emissions = emitted_by_forward(model, ids)
        full = model(ids).logits
        step_emissions, stepped = emitted_by_steps(model, ids, prefill=2)
    assert torch.equal(step_emissions, forward_emissions)
    torch.testing.assert_close(stepped, full, atol=1e-3, rtol=1e-3)
