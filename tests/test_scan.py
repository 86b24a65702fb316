"""The selective scan: custom linear-time backward == autograd through the plain recurrence."""

import torch

from serpent_hf.modeling.scan import SelectiveScan, selective_scan, selective_state_update


def naive_scan(delta, x, A, B, C, initial):
    """The recurrence written plainly (time-major inputs, state (b, n, d)), differentiated by autograd."""
    readouts, h = [], initial
    for t in range(delta.shape[0]):
        h = torch.exp(delta[t].unsqueeze(-2) * A.t()) * h + B[t].unsqueeze(-1) * (delta[t] * x[t]).unsqueeze(-2)
        readouts.append((C[t].unsqueeze(-1) * h).sum(-2))
    return torch.stack(readouts), h


def scan_inputs(length, seed):
    torch.manual_seed(seed)
    l, b, d, n = length, 2, 3, 4
    return (
        torch.rand(l, b, d, dtype=torch.float64, requires_grad=True),
        torch.randn(l, b, d, dtype=torch.float64, requires_grad=True),
        (-torch.rand(d, n, dtype=torch.float64) - 0.1).requires_grad_(),
        torch.randn(l, b, n, dtype=torch.float64, requires_grad=True),
        torch.randn(l, b, n, dtype=torch.float64, requires_grad=True),
        torch.randn(b, n, d, dtype=torch.float64, requires_grad=True),
    )


def test_selective_scan_gradients_match_autograd_of_the_plain_recurrence():
    inputs = scan_inputs(7, seed=0)
    assert torch.autograd.gradcheck(SelectiveScan.apply, inputs)
    readout, final = SelectiveScan.apply(*inputs)
    expected_readout, expected_final = naive_scan(*inputs)
    torch.testing.assert_close(readout, expected_readout)
    torch.testing.assert_close(final, expected_final)
    weights = torch.randn_like(readout), torch.randn_like(final)
    grads = torch.autograd.grad((readout * weights[0]).sum() + (final * weights[1]).sum(), inputs)
    expected = torch.autograd.grad(
        (expected_readout * weights[0]).sum() + (expected_final * weights[1]).sum(), inputs
    )
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_selective_scan_of_one_step_has_gradients():
    assert torch.autograd.gradcheck(SelectiveScan.apply, scan_inputs(1, seed=1))


def test_scan_equals_step_by_step_updates():
    torch.manual_seed(1)
    b, l, d, n = 2, 9, 5, 3
    x, delta = torch.randn(b, l, d), torch.rand(b, l, d)
    A, B, C, D = -torch.rand(d, n) - 0.1, torch.randn(b, l, n), torch.randn(b, l, n), torch.randn(d)
    initial = torch.randn(b, n, d)
    y, final = selective_scan(x, delta, A, B, C, D, initial)
    state, outputs = initial.clone(), []
    for t in range(l):
        outputs.append(selective_state_update(state, x[:, t], delta[:, t], A, B[:, t], C[:, t], D))
    torch.testing.assert_close(y, torch.stack(outputs, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, state, atol=1e-5, rtol=1e-5)


def test_zero_delta_is_an_identity_step():
    torch.manual_seed(2)
    x, delta = torch.randn(1, 4, 3), torch.rand(1, 4, 3)
    A, B, C, D = -torch.rand(3, 2), torch.randn(1, 4, 2), torch.randn(1, 4, 2), torch.randn(3)
    _, final = selective_scan(x[:, :2], delta[:, :2], A, B[:, :2], C[:, :2], D)
    delta_skipped = delta.clone()
    delta_skipped[:, 2:] = 0
    _, final_skipped = selective_scan(x, delta_skipped, A, B, C, D)
    torch.testing.assert_close(final, final_skipped)


def test_chunked_scan_equals_one_chunk(monkeypatch):
    """Chunk boundaries (state handed over, recomputed in backward) change nothing."""
    inputs = scan_inputs(11, seed=2)
    whole = SelectiveScan.apply(*inputs)
    whole_grads = torch.autograd.grad(whole[0].sum() + whole[1].pow(2).sum(), inputs)
    monkeypatch.setattr("serpent_hf.modeling.scan.CHUNK_ELEMENTS", 2 * 3 * 4 * 3)  # 3 time steps per chunk
    chunked = SelectiveScan.apply(*inputs)
    chunked_grads = torch.autograd.grad(chunked[0].sum() + chunked[1].pow(2).sum(), inputs)
    torch.testing.assert_close(chunked[0], whole[0])
    torch.testing.assert_close(chunked[1], whole[1])
    for got, want in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(SelectiveScan.apply, inputs)
