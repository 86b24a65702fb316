"""The selective scan: custom linear-time backward == autograd through the plain recurrence."""

import torch

from modeling.scan import LinearRecurrence, selective_scan, selective_state_update


def naive_recurrence(a, u, initial):
    states, h = [], initial
    for t in range(a.shape[0]):
        h = a[t] * h + u[t]
        states.append(h)
    return torch.stack(states)


def test_linear_recurrence_gradients_match_autograd():
    torch.manual_seed(0)
    a = torch.rand(7, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(7, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LinearRecurrence.apply, (a, u, h0))
    weights = torch.randn(7, 2, 3, 4, dtype=torch.float64)
    grads = torch.autograd.grad((LinearRecurrence.apply(a, u, h0) * weights).sum(), (a, u, h0))
    expected = torch.autograd.grad((naive_recurrence(a, u, h0) * weights).sum(), (a, u, h0))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_scan_equals_step_by_step_updates():
    torch.manual_seed(1)
    b, l, d, n = 2, 9, 5, 3
    x, delta = torch.randn(b, l, d), torch.rand(b, l, d)
    A, B, C, D = -torch.rand(d, n) - 0.1, torch.randn(b, l, n), torch.randn(b, l, n), torch.randn(d)
    initial = torch.randn(b, d, n)
    y, final = selective_scan(x, delta, A, B, C, D, initial)
    state, outputs = initial, []
    for t in range(l):
        out, state = selective_state_update(state, x[:, t], delta[:, t], A, B[:, t], C[:, t], D)
        outputs.append(out)
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
