"""The integer rules of causal selective resampling, checked against values computed by hand.

Δ is chosen exactly through θ_Δ's logit: with compression rate κ = 0.5, a logit of -inf gives
Δ = κ = 0.5, a logit of 0 gives Δ = 0.75 and +inf gives Δ = 1, all multiples of 2^-20, so every
clock value below is exact and the grid points j = 1, 2, ... can fall exactly on a clock value
(a tie). The rules (docs/architecture.md, "One branch"):

    element l emits sample j when t_{l-1} < j <= t_l   (a tie goes to the element whose clock reaches j)
    sample j mixes the K elements e_j-K+1 .. e_j, with gaps j - t_n
    position l reads sample m_l = floor(t_l), scaled by c(t_l - m_l); nothing before the first sample

The parallel plan (plan, compress, decompress), a chunked plan continuing from `advance`, and the
decoding step (the same calls on one element with a grid of width 1) must all give these same numbers.
"""

import math

import pytest
import torch
from torch import nn

from serpent_hf.modeling import CLOCK_QUANTUM, SelectiveResampler

INF = math.inf
# Two rows of 6 elements, κ = 0.5; the logits give the Δ written beside them.
LOGITS = torch.tensor([
    [0.0, 0.0, -INF, INF, -INF, 0.0],   # Δ 0.75 0.75 0.5 1 0.5 0.75 -> t 0.75 1.5 2 3 3.5 4.25
    [INF, -INF, -INF, 0.0, -INF, -INF],  # Δ 1 0.5 0.5 0.75 0.5 0.5   -> t 1 1.5 2 2.75 3.25 3.75
], dtype=torch.float64)
TIMES = [[0.75, 1.5, 2.0, 3.0, 3.5, 4.25], [1.0, 1.5, 2.0, 2.75, 3.25, 3.75]]
# Emitter of each sample j = 1, 2, ...: the first element whose clock reaches j (ties: the element at j).
EMITTERS = [[1, 2, 3, 5], [0, 2, 4]]
COUNTS = [4, 3]
# Which sample each position reads, floor(t_l), and the decompression gap t_l - floor(t_l).
READS = [[0, 1, 2, 3, 3, 4], [1, 1, 2, 2, 3, 3]]
HIDDEN, K = 2, 2


class RecordingBasis(nn.Module):
    """Stands in for a Gaussian basis: records what it is given; compression returns the plain sum of the
    neighbours, decompression a scale of one, so the values that come out are set by the integer rules alone."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.bias = torch.zeros(HIDDEN)  # empty_state reads the width from it

    def combine(self, gaps, neighbors):
        self.calls.append((gaps.detach().clone(), neighbors.detach().clone()))
        return neighbors.sum(dim=-2)

    def forward(self, gaps):
        self.calls.append(gaps.detach().clone())
        return torch.ones(*gaps.shape, HIDDEN, dtype=gaps.dtype)


def recording_resampler(rate=0.5, neighbors=K):
    resampler = SelectiveResampler(HIDDEN, rate, neighbors, num_basis=4, causal=True, delta_from_input=False)
    resampler.compression_basis, resampler.decompression_basis = RecordingBasis(), RecordingBasis()
    return resampler


def elements(batch=2, length=6):
    """x_n = 2^n in channel 0 (a sum of neighbours names the set it came from) and n + 1 in channel 1."""
    n = torch.arange(length, dtype=torch.float64)
    return torch.stack([2.0**n, n + 1], dim=-1).expand(batch, length, HIDDEN).clone()


def expected_sample(row, j):
    """Channel 0 of x~_j: the sum of 2^n over the K elements up to the emitter (none before the start)."""
    emitter = EMITTERS[row][j - 1]
    return sum(2.0**n for n in range(emitter - K + 1, emitter + 1) if n >= 0)


def test_the_plan_places_the_grid_on_the_clock_with_ties_going_to_the_element_at_the_grid_point():
    resampler = recording_resampler()
    plan = resampler.plan(elements(), logits=LOGITS)
    assert plan.times.tolist() == TIMES
    assert plan.new_counts.tolist() == COUNTS
    assert plan.grid.tolist() == [[1.0, 2.0, 3.0, 4.0]] * 2
    assert plan.sample_valid.tolist() == [[True] * 4, [True, True, True, False]]


def test_compression_gathers_the_k_elements_up_to_each_emitter_with_their_clock_gaps():
    resampler = recording_resampler()
    x = elements()
    plan = resampler.plan(x, logits=LOGITS)
    samples = resampler.compress(x, plan)
    for row in range(2):
        for j in range(1, COUNTS[row] + 1):
            assert samples[row, j - 1, 0].item() == expected_sample(row, j), (row, j)
        assert samples[row, COUNTS[row] :].abs().sum().item() == 0  # past the row's samples: zero
    (gaps, _), = resampler.compression_basis.calls
    for row in range(2):
        for j in range(1, COUNTS[row] + 1):
            emitter = EMITTERS[row][j - 1]
            # The element before the first has time 0 (an empty state remembers zeros at time 0).
            expected = sorted(j - (TIMES[row][n] if n >= 0 else 0.0) for n in (emitter, emitter - 1))
            assert sorted(gaps[row, j - 1].tolist()) == expected, (row, j)


def test_decompression_reads_the_latest_sample_with_the_time_since_it_was_emitted():
    resampler = recording_resampler()
    x = elements()
    plan = resampler.plan(x, logits=LOGITS)
    outputs = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64).view(1, 4, 1).expand(2, 4, HIDDEN)
    read, last_output = resampler.decompress(outputs, plan)
    expected = [[10.0 * m for m in row] for row in READS]  # sample m holds 10 m; m = 0: nothing yet, 0
    assert read[..., 0].tolist() == expected
    assert last_output[:, 0].tolist() == [40.0, 30.0]  # y~ of each row's own last sample
    (gaps,) = resampler.decompression_basis.calls
    assert gaps.tolist() == [[t - m for t, m in zip(times, reads)] for times, reads in zip(TIMES, READS)]


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_a_chunk_continuing_from_the_state_plans_what_one_pass_plans(cut):
    """advance() hands the next chunk the clock, the emitted count, the K last elements and their times."""
    resampler = recording_resampler()
    x = elements()
    whole = resampler.plan(x, logits=LOGITS)
    whole_samples = resampler.compress(x, whole)
    first = resampler.plan(x[:, :cut], logits=LOGITS[:, :cut])
    first_samples = resampler.compress(x[:, :cut], first)
    state = resampler.advance(x[:, :cut], first, last_output=torch.zeros(2, HIDDEN, dtype=torch.float64))
    second = resampler.plan(x[:, cut:], logits=LOGITS[:, cut:], previous=state)
    second_samples = resampler.compress(x[:, cut:], second)
    assert torch.equal(torch.cat([first.times, second.times], 1), whole.times)
    assert torch.equal(first.new_counts + second.new_counts, whole.new_counts)
    for row in range(2):
        pieces = [first_samples[row, : first.new_counts[row]], second_samples[row, : second.new_counts[row]]]
        assert torch.equal(torch.cat(pieces), whole_samples[row, : whole.new_counts[row]])


def test_the_decoding_step_emits_gathers_and_reads_as_the_plan_does():
    """Element by element, as Branch.step runs them: a plan of one element whose grid has room for one sample
    (no host read of the count), then compress, decompress and advance."""
    resampler = recording_resampler()
    x = elements()
    state = resampler.empty_state(2, "cpu", torch.float64)
    outputs = {1: 10.0, 2: 20.0, 3: 30.0, 4: 40.0}
    for position in range(6):
        element = x[:, position : position + 1]
        plan = resampler.plan(element, logits=LOGITS[:, position : position + 1], previous=state, width=1)
        emits = plan.sample_valid[:, 0]
        assert plan.times[:, 0].tolist() == [TIMES[0][position], TIMES[1][position]]
        for row in range(2):
            assert bool(emits[row]) == (position in EMITTERS[row]), (row, position)
        sample = resampler.compress(element, plan)[:, 0]
        gaps, _ = resampler.compression_basis.calls[-1]
        ssm_output = torch.zeros(2, 1, HIDDEN, dtype=torch.float64)
        for row in range(2):
            if emits[row]:
                j = int(plan.grid[row, 0])
                assert sample[row, 0].item() == expected_sample(row, j), (row, j)
                expected = sorted(j - (TIMES[row][n] if n >= 0 else 0.0) for n in (position, position - 1))
                assert sorted(gaps[row, 0].tolist()) == expected
                ssm_output[row] = outputs[j]  # what the SSM would return for sample j
            else:
                assert sample[row].abs().max().item() == 0.0  # outside the row's grid: masked
        read, last_output = resampler.decompress(ssm_output, plan)
        assert read[:, 0, 0].tolist() == [10.0 * READS[0][position], 10.0 * READS[1][position]]
        state.copy_(resampler.advance(element, plan, last_output))
    assert state.emitted.tolist() == [len(EMITTERS[0]), len(EMITTERS[1])]


def test_the_smallest_delta_never_rounds_below_the_compression_rate():
    """κ = 0.2 is not a multiple of 2^-20; the nearest multiple lies below it. Δ must be rounded up instead,
    so five elements at the smallest Δ still reach time 1 and emit floor(κ L) = 1 sample."""
    assert round(0.2 / CLOCK_QUANTUM) * CLOCK_QUANTUM < 0.2
    resampler = recording_resampler(rate=0.2)
    x = elements(batch=1, length=5)
    plan = resampler.plan(x, logits=torch.full((1, 5), -INF, dtype=torch.float64))
    assert bool((plan.deltas >= 0.2).all()) and bool((torch.remainder(plan.deltas, CLOCK_QUANTUM) == 0).all())
    assert plan.new_counts.tolist() == [1]


def test_padding_gets_no_time_and_never_emits():
    resampler = recording_resampler()
    x = elements(batch=1, length=8)
    valid = torch.tensor([[False, False] + [True] * 6])
    logits = torch.cat([torch.zeros(1, 2, dtype=torch.float64), LOGITS[:1]], dim=1)
    plan = resampler.plan(x * valid.unsqueeze(-1), valid, logits)
    assert plan.times.tolist() == [[0.0, 0.0] + TIMES[0]]
    assert plan.new_counts.tolist() == [COUNTS[0]]
    samples = resampler.compress(x * valid.unsqueeze(-1), plan)
    for j in range(1, COUNTS[0] + 1):  # the same sets of real elements as unpadded, shifted by the padding
        assert samples[0, j - 1, 0].item() == 4 * expected_sample(0, j)
