"""The clock is the same bits however its sum runs, and padding changes nothing, in every delta_window.

Every Δ is rounded to a multiple of 2^-20 (CLOCK_QUANTUM), so every partial sum of Δ is exact in float64
and the clock t_l = Δ_1 + ... + Δ_l does not depend on the order of the additions. These tests add in
orders that float64 would otherwise round differently: a chunked plan (the clock of the chunk before plus
the chunk's own cumulative sum), the reversed sequence, pairwise halves, rows inside batches of other
shapes. Without the rounding they fail (scripts/mutation_check.py plants exactly that bug).
"""

import pytest
import torch

from serpent_hf.modeling import CLOCK_QUANTUM

from .conftest import DECODING_TOLERANCE, cache_of, random_resampler, tiny_model


def chunked_times(resampler, x, sizes):
    """The clock planned chunk by chunk, each chunk continuing from the state `advance` leaves."""
    state, pieces, start = None, [], 0
    for size in sizes:
        chunk = x[:, start : start + size]
        plan = resampler.plan(chunk, previous=state)
        state = resampler.advance(chunk, plan, last_output=torch.zeros(x.shape[0], x.shape[-1]))
        pieces.append(plan.times)
        start += size
    return torch.cat(pieces, dim=1), state


def test_a_chunked_plan_gives_the_clock_of_one_pass_bit_for_bit():
    resampler = random_resampler(0.3, seed=3)
    x = torch.randn(2, 3000, 8)
    with torch.no_grad():
        whole = resampler.plan(x)
        chunked, state = chunked_times(resampler, x, (1, 7, 293, 4, 1024, 1671))
    assert torch.equal(chunked, whole.times)
    assert torch.equal(state.emitted, whole.times[:, -1].floor())


def test_the_clock_is_the_same_summed_in_any_order():
    resampler = random_resampler(0.3, seed=5)
    with torch.no_grad():
        deltas = resampler.deltas(torch.randn(1, 5000, 8))[0]
    assert bool((torch.remainder(deltas, CLOCK_QUANTUM) == 0).all())
    end = torch.cumsum(deltas, 0)[-1]
    assert torch.equal(deltas.flip(0).cumsum(0)[-1], end)  # reversed
    assert torch.equal(deltas[:2500].sum() + deltas[2500:].sum(), end)  # two halves, then their sum
    assert torch.equal(deltas.view(50, 100).sum(1).cumsum(0)[-1], end)  # blocks of 100
    assert torch.equal(deltas[torch.randperm(5000, generator=torch.Generator().manual_seed(0))].sum(), end)


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_a_row_plans_the_same_clock_alone_and_in_batches_of_other_shapes(delta_source):
    """θ_Δ in a batched matrix product and for one row: the same Δ, hence the same clock, bit for bit."""
    model = tiny_model(seed=2, delta_source=delta_source, num_hidden_layers=1)
    ids = torch.randint(3, 97, (7, 300), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched = model(ids, output_deltas=True).deltas[0]  # (b, branches, l)
        alone = model(ids[3:4], output_deltas=True).deltas[0]
        pair = model(ids[2:4], output_deltas=True).deltas[0]
    for other in (alone[0], pair[1]):
        assert torch.equal(other, batched[3])
        assert torch.equal(other.cumsum(-1), batched[3].cumsum(-1))


@pytest.mark.parametrize("delta_window", [1, 3, 8])
def test_a_left_padded_row_emits_and_predicts_as_the_row_alone_in_every_delta_window(delta_window):
    """Padding scores 0 in θ_Δ's window and moves no clock, so a row's emissions are exactly its own and its
    logits equal the row's alone (README: exact with left padding for any delta_window)."""
    model = tiny_model(seed=5, delta_window=delta_window)
    generator = torch.Generator().manual_seed(delta_window)
    rows = [torch.randint(3, 97, (n,), generator=generator) for n in (40, 23, 31)]
    width = max(len(row) for row in rows)
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    with torch.no_grad():
        together = model(ids, attention_mask=mask, output_deltas=True)
        for i, row in enumerate(rows):
            alone = model(row[None], output_deltas=True)
            pad = width - len(row)
            assert together.deltas[:, i, :, :pad].abs().sum() == 0  # padding has no time
            assert torch.equal(together.deltas[:, i, :, pad:], alone.deltas[:, 0])
            assert torch.equal(together.compressed_lengths[:, i], alone.compressed_lengths[:, 0])
            torch.testing.assert_close(together.logits[i, pad:], alone.logits[0], rtol=0, atol=DECODING_TOLERANCE)


@pytest.mark.parametrize("delta_window", [1, 4])
def test_a_left_padded_batch_decodes_step_by_step_as_one_pass(delta_window):
    """Prefill a left-padded batch, then one token per call: the clocks and logits of one pass over it."""
    model = tiny_model(seed=6, delta_window=delta_window)
    ids = torch.randint(3, 97, (2, 30), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[0, :9] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=True)
        prefill = model(ids[:, :12], attention_mask=mask[:, :12], use_cache=True)
        cache, logits = cache_of(prefill), [prefill.logits]
        for position in range(12, 30):
            logits.append(model(ids[:, position : position + 1], past_key_values=cache).logits)
    for stepped, parallel in zip(cache.layer_states, cache_of(full).layer_states):
        for a, b in zip(stepped, parallel):
            if a.resampling is not None:
                assert torch.equal(a.resampling.clock, b.resampling.clock)
                assert torch.equal(a.resampling.emitted, b.resampling.emitted)
    torch.testing.assert_close(torch.cat(logits, 1)[0, 9:], full.logits[0, 9:], rtol=0, atol=DECODING_TOLERANCE)
    torch.testing.assert_close(torch.cat(logits, 1)[1], full.logits[1], rtol=0, atol=DECODING_TOLERANCE)
