"""Invariants of causal selective resampling (DESIGN.md sections 1 and 3)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_hf.modeling import CLOCK_QUANTUM

from .conftest import random_resampler, selectivity_networks, tiny_model


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.05, 0.95), length=st.integers(1, 200), seed=st.integers(0, 10_000))
def test_compressed_length_lies_between_floor_rate_times_length_and_length(rate, length, seed):
    resampler = random_resampler(rate, seed)
    x = torch.randn(2, length, 8)
    deltas = resampler.deltas(x)
    assert bool(((deltas >= rate) & (deltas <= 1.0)).all())
    plan = resampler.plan(x)
    assert torch.equal(plan.deltas, deltas) and torch.equal(plan.times, torch.cumsum(deltas, -1))
    samples, counts = resampler.compress(x, plan), plan.new_counts
    assert samples.shape[1] == int(counts.max())
    assert bool((counts >= math.floor(rate * length)).all()) and bool((counts <= length).all())


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(0.05, 0.95), length=st.integers(2, 150), seed=st.integers(0, 10_000))
def test_each_element_emits_at_most_one_sample(rate, length, seed):
    resampler = random_resampler(rate, seed)
    times = torch.cumsum(resampler.deltas(torch.randn(1, length, 8)), -1)[0]
    emitted_per_element = torch.diff(torch.floor(times), prepend=torch.zeros(1, dtype=times.dtype))
    assert set(emitted_per_element.tolist()) <= {0.0, 1.0}
    grid = torch.arange(1, int(times[-1]) + 1, dtype=torch.float64)
    emitters = torch.searchsorted(times, grid)
    assert bool((torch.diff(emitters) > 0).all())  # distinct emitters, in order


def test_clock_is_bit_identical_however_it_is_summed():
    resampler = random_resampler(0.3, seed=3)
    deltas = resampler.deltas(torch.randn(1, 5000, 8))[0].detach()
    assert bool((torch.remainder(deltas, CLOCK_QUANTUM) == 0).all())
    parallel = torch.cumsum(deltas, 0)
    sequential, clock = [], torch.zeros((), dtype=torch.float64)
    for delta in deltas:  # one Δ per generated token, as in decoding
        clock = clock + delta
        sequential.append(clock)
    assert torch.equal(parallel, torch.stack(sequential))
    shuffled = deltas[torch.randperm(len(deltas))]
    assert torch.equal(shuffled.sum(), parallel[-1])
    assert torch.equal(deltas.flip(0).cumsum(0)[-1], parallel[-1])


def test_padding_does_not_move_the_clock():
    resampler = random_resampler(0.5, seed=4)
    valid = torch.tensor([[False, False, True, True, True]])
    deltas = resampler.deltas(torch.randn(1, 5, 8), valid)
    assert deltas[0, :2].tolist() == [0.0, 0.0] and bool((deltas[0, 2:] >= 0.5).all())


def test_left_padded_row_gives_the_same_outputs_as_the_unpadded_row():
    model = tiny_model(seed=5)
    ids = torch.randint(3, 97, (1, 23))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 23, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(ids).logits
        together = model(padded, attention_mask=mask)
    torch.testing.assert_close(together.logits[:, 6:], alone, atol=1e-5, rtol=1e-5)
    assert bool((together.compressed_lengths[:, 0, 0] == 23).all())


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_gradients_reach_every_selectivity_network(delta_source):
    model = tiny_model(seed=6, delta_source=delta_source).train()
    ids = torch.randint(3, 97, (2, 40))
    model(ids, labels=ids).loss.backward()
    for network in selectivity_networks(model.model):
        gradient = network.weight.grad  # one row per network (layer and branch) in embedding mode
        assert gradient is not None and bool((gradient.abs().sum(-1) > 0).all())


@pytest.mark.parametrize("embedding_std", [None, 0.02])
def test_selectivity_scores_are_zero_on_padding_in_both_modes(embedding_std):
    """θ_Δ's score of a padded element is 0 whether it reads hidden states (plain float64) or embeddings (exact)."""
    from serpent_hf.modeling import SelectivityNetwork

    network = SelectivityNetwork(16, num_networks=3, embedding_std=embedding_std)
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    scores = network.scores(x, valid)
    assert scores.shape == (2, 5, 3)
    assert (scores[~valid] == 0).all() and (scores[valid] != 0).all()
    torch.testing.assert_close(scores[valid], network.scores(x)[valid], rtol=0, atol=0)


@pytest.mark.parametrize("window", [1, 4])
def test_embedding_logits_are_the_bias_plus_the_mean_of_the_last_w_scores(window):
    """θ_Δ's logit from the token embeddings as its docstring writes it, computed here element by element:
    u = e/σ_e on a grid of 2^-10, w on a grid of 2^-16, s_l = w·u_l, logit_l = b + (1/W)(s_l + ... + s_{l-W+1}),
    with no score before the first token. A chunk continued from the returned state gives the same logits."""
    from serpent_hf.modeling import SelectivityNetwork

    torch.manual_seed(window)
    hidden, networks, std = 8, 3, 0.02
    network = SelectivityNetwork(hidden, num_networks=networks, window=window, embedding_std=std)
    with torch.no_grad():
        network.weight.normal_(0.0, 0.5)
        network.bias.normal_(0.0, 1.0)
    embeddings = torch.randn(2, 9, hidden) * std
    u = torch.round(embeddings.double() / std * 2**10) / 2**10
    w = torch.round(network.weight.detach().double() * 2**16) / 2**16
    bias = network.bias.detach().double()
    expected = torch.zeros(2, 9, networks, dtype=torch.float64)
    for row in range(2):
        for l in range(9):
            for p in range(networks):
                window_scores = [float(w[p] @ u[row, k]) for k in range(max(0, l - window + 1), l + 1)]
                expected[row, l, p] = float(bias[p]) + sum(window_scores) / window
    with torch.no_grad():
        logits, _ = network(embeddings)
        first, state = network(embeddings[:, :5])
        second, _ = network(embeddings[:, 5:], state=state)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, rtol=0, atol=0)
