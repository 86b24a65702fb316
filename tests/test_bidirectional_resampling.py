"""Invariants of bidirectional (non-causal) selective resampling, used for classification."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from serpent_hf.modeling import Branch
from serpent_hf.modeling.resampling import ResamplingPlan, nearest_neighbors
from serpent_hf import SeRpEntForSequenceClassification

from .conftest import random_resampler, selectivity_networks, tiny_config


def bidirectional_resampler(rate, seed, neighbors=3):
    return random_resampler(rate, seed, neighbors=neighbors, causal=False)


def padded_times(resampler, x, valid):
    return torch.cumsum(resampler.deltas(x, valid), dim=-1)


def random_branch(rate, seed, ssm_type="s4d"):
    torch.manual_seed(seed)
    config = tiny_config(ssm_type=ssm_type, state_size=8, bidirectional=True, delta_source="hidden")
    branch = Branch(config, rate, causal=False).eval()
    with torch.no_grad():
        branch.resampler.selectivity.weight.normal_(0, 1.0)
        branch.resampler.selectivity.bias.normal_(0, 1.0)
    return branch


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.05, 0.95), length=st.integers(1, 150), seed=st.integers(0, 10_000))
def test_compressed_length_lies_between_floor_rate_times_length_and_length(rate, length, seed):
    resampler = bidirectional_resampler(rate, seed)
    x = torch.randn(2, length, 8)
    plan = resampler.plan(x)
    samples, sample_valid, counts = resampler.compress(x, plan), plan.sample_valid, plan.new_counts
    assert samples.shape == (2, int(counts.max()), 8) and sample_valid.shape == samples.shape[:2]
    assert bool((counts >= max(math.floor(rate * length), 1)).all()) and bool((counts <= length).all())
    assert torch.equal(sample_valid.sum(-1), counts)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.05, 0.95), length=st.integers(1, 80), left=st.integers(0, 6), right=st.integers(0, 6),
       neighbors=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_neighbors_are_the_k_real_elements_nearest_in_time(rate, length, left, right, neighbors, seed):
    resampler = bidirectional_resampler(rate, seed, neighbors=neighbors)
    valid = torch.tensor([[False] * left + [True] * length + [False] * right])
    times = padded_times(resampler, torch.randn(1, valid.shape[1], 8), valid).detach()
    grid = torch.arange(1, max(math.floor(float(times[0, -1])), 1) + 1, dtype=torch.float64).unsqueeze(0)
    index, in_range = nearest_neighbors(times, grid, neighbors)
    assert index.shape == in_range.shape == (1, grid.shape[1], neighbors)
    chosen = index[in_range]
    assert bool((chosen >= left).all()) and bool((chosen < left + length).all())  # real elements only
    assert bool((in_range.sum(-1) == min(neighbors, length)).all())
    real_times = times[0, left : left + length]
    for j, point in enumerate(grid[0]):
        picked = (point - times[0, index[0, j][in_range[0, j]]]).abs().sort().values
        nearest = (point - real_times).abs().sort().values[: min(neighbors, length)]
        torch.testing.assert_close(picked, nearest, atol=0, rtol=0)  # same distances (ties may swap elements)


def test_decompression_reads_the_nearest_grid_point_rounding_halves_up():
    resampler = bidirectional_resampler(0.3, seed=0)
    times = torch.tensor([[0.3, 0.75, 1.5, 2.25, 2.5, 2.875]], dtype=torch.float64)
    outputs = torch.arange(1, 3, dtype=torch.float32).view(1, 2, 1).expand(1, 2, 8)  # y~_m = m, M = 2
    with torch.no_grad():
        resampler.decompression_basis.weight.zero_()
        resampler.decompression_basis.bias.fill_(1.0)
    plan = ResamplingPlan(previous=resampler.empty_state(1, times.device), deltas=torch.diff(times, prepend=times[:, :1] * 0),
                          times=times, grid=torch.tensor([[1.0, 2.0]], dtype=torch.float64),
                          sample_valid=torch.ones(1, 2, dtype=torch.bool), new_counts=torch.tensor([2]))
    read, _ = resampler.decompress(outputs, plan)
    # nearest grid point floor(t + 1/2), clamped to [1, M]: 0.3 -> 1, 0.75 -> 1, 1.5 -> 2, 2.25 -> 2, 2.5 -> 2 (M)
    assert read[0, :, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]


@settings(max_examples=12, deadline=None)
@given(rate=st.sampled_from([0.75, 0.5, 0.25, 0.1]), length=st.integers(1, 50), pad=st.integers(1, 12),
       seed=st.integers(0, 1000), ssm_type=st.sampled_from(["s4d", "mamba"]))
def test_right_padding_does_not_change_outputs_at_real_positions(rate, length, pad, seed, ssm_type):
    branch = random_branch(rate, seed, ssm_type)
    x = torch.randn(2, length, 32)
    garbage = torch.randn(2, pad, 32) * 10  # padded positions hold anything: they must contribute nothing
    valid = torch.cat([torch.ones(2, length, dtype=torch.bool), torch.zeros(2, pad, dtype=torch.bool)], 1)
    with torch.no_grad():
        alone, _, alone_stats = branch(x)
        padded, _, padded_stats = branch(torch.cat([x, garbage], 1), valid)
    torch.testing.assert_close(padded[:, :length], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(padded_stats.compressed_lengths, alone_stats.compressed_lengths)


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_left_padding_and_padded_tokens_do_not_change_the_classification(delta_source):
    torch.manual_seed(1)
    model = SeRpEntForSequenceClassification(tiny_config(ssm_type="s4d", state_size=8, bidirectional=True,
                                                         num_labels=3, delta_source=delta_source)).eval()
    with torch.no_grad():
        for network in selectivity_networks(model.model):
            network.weight.normal_(0, 1.0)
    ids = torch.randint(3, 97, (1, 41))
    filler = torch.randint(3, 97, (1, 7))  # real-looking tokens under attention_mask = 0
    mask = torch.cat([torch.ones(1, 41), torch.zeros(1, 7)], 1).long()
    with torch.no_grad():
        alone = model(ids).logits
        right = model(torch.cat([ids, filler], 1), attention_mask=mask).logits
        left = model(torch.cat([filler, ids], 1), attention_mask=mask.flip(1)).logits
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


def test_later_tokens_change_earlier_outputs():
    # What makes it bidirectional: unlike the causal branch, position 0 sees the end of the sequence.
    branch = random_branch(0.5, seed=2)
    x = torch.randn(1, 40, 32)
    changed = x.clone()
    changed[:, 30:] = torch.randn(1, 10, 32)
    with torch.no_grad():
        assert not torch.allclose(branch(x)[0][:, :5], branch(changed)[0][:, :5])


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_gradients_reach_every_selectivity_network(delta_source):
    torch.manual_seed(3)
    model = SeRpEntForSequenceClassification(tiny_config(ssm_type="s4d", state_size=8, bidirectional=True,
                                                         num_labels=4, delta_source=delta_source)).train()
    ids = torch.randint(3, 97, (3, 45))
    model(ids, labels=torch.tensor([0, 1, 3])).loss.backward()
    for network in selectivity_networks(model.model):
        gradient = network.weight.grad  # one row per network (layer and branch) in embedding mode
        assert gradient is not None and bool((gradient.abs().sum(-1) > 0).all())
