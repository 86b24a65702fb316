"""Kernel dispatch, CUDA-graph decoding and mixed precision.

The tests marked `cuda` compare the mamba-ssm / causal-conv1d kernels with the PyTorch path
and run only where a CUDA GPU and the `cuda` extra are present; the rest check, on any
machine, the parts of that machinery that do not need a GPU.
"""

import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from serpent_hf import SeRpEntForCausalLM
from serpent_hf.cuda_graphs import StaticDecodeStep
from serpent_hf.modeling import kernels

from .conftest import cache_of, selectivity_networks, tiny_config, tiny_model

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def fake_cuda_tensor():
    return types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


# That no kernel package is looked for on a CPU, and that a missing kernel warns once: tests/test_promises.py.


def test_requiring_missing_kernels_is_an_error_naming_the_reason(monkeypatch):
    kernels._warn_fallback.cache_clear()
    monkeypatch.setattr(kernels, "_load", lambda name: (None, f"{name}: OSError: undefined symbol in the extension"))
    with pytest.raises(kernels.KernelsUnavailableError, match="use_kernels=True but selective_scan_fn.*undefined"):
        kernels.kernel("selective_scan_fn", fake_cuda_tensor(), True)


def test_forcing_kernels_on_a_cpu_model_is_a_clear_error():
    model = tiny_model(seed=1, use_kernels=True)
    with pytest.raises(kernels.KernelsUnavailableError, match="needs CUDA tensors"):
        model(torch.randint(3, 97, (1, 8)))


def test_static_buffer_decoding_step_matches_eager_decoding():
    """The step a CUDA graph records (static buffers, in-place state updates), run eagerly on the CPU."""
    model = tiny_model(seed=2)
    ids = torch.randint(3, 97, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = cache_of(model(ids[:, :5], use_cache=True))
        step = StaticDecodeStep(model.model, cache)
        logits = [model.lm_head(step(model.model.embeddings(ids[:, t])).hidden_states) for t in range(5, 20)]
    assert (torch.stack(logits, 1) - full[:, 5:]).abs().max().item() < 1e-4


def without_the_ssms(model):
    """A copy of `model` whose every mixer outputs zero: what the SSMs contribute is measured against it."""
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in copy.model.layers:
            for branch in layer.branches:
                branch.mixer.out_proj.weight.zero_()
    return copy.to(next(model.parameters()).dtype).eval()


def ssm_states(cache):
    return [state.mixer.ssm for layer in cache.layer_states for state in layer]


def test_bfloat16_autocast_training_stays_finite_with_float32_ssm_state():
    """Under bfloat16 autocast the SSM state stays float32 and the clock float64; the loss moves by a small part
    of what the SSMs contribute to it (not by a tolerance the size of that contribution)."""
    model = tiny_model(seed=3).train()
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        reference = model(ids, labels=ids).loss.item()
        signal = abs(without_the_ssms(model)(ids, labels=ids).loss.item() - reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, use_cache=True, output_deltas=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and abs(out.loss.item() - reference) < 0.05 * signal
    assert out.logits.dtype == torch.float32 and out.deltas.dtype == torch.float64  # the clock is never autocast
    assert {state.dtype for state in ssm_states(cache_of(out))} == {torch.float32}
    for layer in cache_of(out).layer_states:
        for state in layer:
            if state.resampling is not None:
                assert state.resampling.clock.dtype == state.resampling.emitted.dtype == torch.float64
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


# The kernels' contracts in their own (b, d, ·) layouts, written plainly: what mamba-ssm and causal-conv1d compute.
def plain_selective_scan_fn(u, delta, A, B, C, D, delta_softplus=False, return_last_state=True):
    """u, delta (b, d, l); B, C (b, n, l); a zero start state -> y (b, d, l), last state (b, d, n)."""
    state, outputs = u.new_zeros(*u.shape[:2], A.shape[1]), []
    for t in range(u.shape[-1]):
        state = torch.exp(delta[..., t, None] * A) * state + (delta[..., t] * u[..., t])[..., None] * B[:, None, :, t]
        outputs.append((state * C[:, None, :, t]).sum(-1) + D * u[..., t])
    return torch.stack(outputs, -1), state


def plain_selective_state_update(state, x, dt, A, B, C, D, dt_bias=None, dt_softplus=False):
    """state (b, d, n) advanced in place; x, dt (b, d); B, C (b, n) -> y (b, d)."""
    dt = dt if dt_bias is None else dt + dt_bias
    state.copy_(torch.exp(dt[..., None] * A) * state + (dt * x)[..., None] * B[:, None])
    return (state * C[:, None]).sum(-1) + D * x


def plain_causal_conv1d_fn(x, weight, bias, activation):
    """x (b, d, l), weight (d, k) -> silu(causal depthwise conv) (b, d, l)."""
    padded = torch.nn.functional.pad(x, (weight.shape[1] - 1, 0))
    return torch.nn.functional.silu(torch.nn.functional.conv1d(padded, weight[:, None], bias, groups=x.shape[1]))


def plain_causal_conv1d_update(x, conv_state, weight, bias, activation):
    """conv_state (b, d, k) shifted left in place and x (b, d) appended -> silu(conv) (b, d)."""
    conv_state.copy_(torch.cat([conv_state[..., 1:], x[..., None]], -1))
    return torch.nn.functional.silu((conv_state * weight).sum(-1) + bias)


PLAIN_KERNELS = {
    "selective_scan_fn": plain_selective_scan_fn,
    "selective_state_update": plain_selective_state_update,
    "causal_conv1d_fn": plain_causal_conv1d_fn,
    "causal_conv1d_update": plain_causal_conv1d_update,
}


def test_kernel_calls_see_their_own_layouts_and_update_the_cache_in_place(monkeypatch):
    """On any machine: the dispatch hands each kernel the (b, d, ·) views it expects of the
    channels-last cache, and in-place kernel updates reach the cache. Each kernel is replaced
    by its contract written plainly; decoding must still equal the full forward pass."""
    model = tiny_model(seed=7)
    ids = torch.randint(3, 97, (3, 30))

    def decode():
        with torch.no_grad():
            out = model(ids[:, :9], use_cache=True)
            cache, pieces = cache_of(out), [out.logits]
            for t in range(9, ids.shape[1]):
                pieces.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
        return torch.cat(pieces, 1)

    with torch.no_grad():
        full = model(ids).logits
    monkeypatch.setattr(kernels, "kernel", lambda name, tensor, use_kernels: PLAIN_KERNELS.get(name))
    assert (decode() - full).abs().max().item() < 1e-4


def test_the_fused_training_kernel_is_left_out_where_a_projection_computes_more_than_its_weight(monkeypatch):
    """mamba_inner_fn multiplies by the projections' weights itself: a mixer whose out_proj has a hook (or a
    LoRA adapter) must take the unfused path, the others keep the kernel. A stand-in kernel counts its calls."""
    model = tiny_model(seed=2).train()
    calls = []

    def mamba_inner_fn(xz, *args, **kwargs):
        calls.append(xz.shape)
        return xz.new_zeros(xz.shape[0], xz.shape[2], model.config.hidden_size)

    monkeypatch.setattr(kernels, "kernel", lambda name, tensor, use_kernels: PLAIN_KERNELS.get(name, mamba_inner_fn))
    ids = torch.randint(3, 97, (2, 12))
    model(ids, use_cache=False)
    fused = len(calls)
    assert fused == model.config.num_hidden_layers  # every rate-1 branch (the others see padded samples)
    model.model.layers[0].branches[0].mixer.out_proj.register_forward_hook(lambda module, args, output: output)
    calls.clear()
    model(ids, use_cache=False)
    assert len(calls) == fused - 1


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
def test_kernel_path_matches_pytorch_path_forward_and_gradients(dtype, tolerance):
    pytest.importorskip("mamba_ssm")
    ids = torch.randint(3, 97, (2, 64), device="cuda")
    results = []
    for use_kernels in (False, True):
        model = tiny_model(seed=4, use_kernels=use_kernels).cuda().train()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.float().clone() for p in model.parameters()]))
    (loss_ref, grads_ref), (loss_kernel, grads_kernel) = results
    assert abs(loss_ref - loss_kernel) / loss_ref < tolerance
    for reference, kernel in zip(grads_ref, grads_kernel):
        assert (reference - kernel).norm() <= tolerance * max(reference.norm(), 1e-6)


@requires_cuda
@pytest.mark.cuda
def test_kernel_decoding_and_cuda_graph_decoding_match_eager_pytorch_decoding():
    pytest.importorskip("mamba_ssm")
    ids = torch.randint(3, 97, (3, 40), device="cuda")
    logits = {}
    for name, overrides in {
        "pytorch": dict(use_kernels=False),
        "kernels": dict(use_kernels=True),
        "graphs": dict(use_kernels=True, use_cuda_graphs=True),
    }.items():
        model = tiny_model(seed=5, **overrides).cuda()
        with torch.no_grad():
            out = model(ids[:, :8], use_cache=True)
            cache, pieces = cache_of(out), [out.logits]
            for t in range(8, 40):
                pieces.append(model(ids[:, t : t + 1], past_key_values=cache).logits)
        logits[name] = torch.cat(pieces, 1)
    full = tiny_model(seed=5, use_kernels=False).cuda()(ids).logits
    assert (logits["pytorch"] - full).abs().max().item() < 1e-4
    assert (logits["kernels"] - logits["pytorch"]).abs().max().item() < 1e-3
    assert (logits["graphs"] - logits["kernels"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_bfloat16_checkpoint_keeps_ssm_and_selectivity_parameters_in_float32(tmp_path, delta_source):
    """Loaded in bfloat16, A_log, D and θ_Δ stay float32, the SSM state stays float32 in a forward pass and in
    decoding steps from an empty cache, and the logits move by a small part of what the SSMs contribute."""
    model = tiny_model(seed=6, delta_source=delta_source)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    branch = loaded.model.layers[0].branches[1]
    assert branch.mixer.in_proj.weight.dtype == torch.bfloat16
    for parameter in (branch.mixer.A_log, branch.mixer.D, selectivity_networks(loaded.model)[0].weight):
        assert parameter.dtype == torch.float32
    ids = torch.randint(3, 97, (2, 30))
    with torch.no_grad():
        low, full = loaded(ids).logits, model(ids).logits
        signal = (without_the_ssms(model)(ids).logits - full).abs().mean()
        assert {state.dtype for state in ssm_states(cache_of(loaded(ids, use_cache=True)))} == {torch.float32}
        cache = loaded.model.empty_cache(2)
        for position in range(3):
            loaded(ids[:, position : position + 1], past_key_values=cache)
        assert {state.dtype for state in ssm_states(cache)} == {torch.float32}
    # Measured: 0.9% (embedding) and 5.7% (hidden: bfloat16 hidden states move some Δ, and emissions with them).
    assert torch.isfinite(low).all() and (low - full).abs().mean() < 0.1 * signal


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_residual_in_fp32_keeps_the_stream_between_blocks_in_float32(tmp_path, residual_in_fp32):
    """With residual_in_fp32 a bfloat16 model carries every block's input and output in float32, as Mamba does
    (it once rounded the sum back to bfloat16 after every block, so the flag changed nothing); the layers still run
    in bfloat16, and the flag changes the logits."""
    model = tiny_model(seed=6, residual_in_fp32=residual_in_fp32)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, dtype=torch.bfloat16)
    ids = torch.randint(3, 97, (2, 30))
    with torch.no_grad():
        output = loaded(ids, output_hidden_states=True)
        stream = torch.float32 if residual_in_fp32 else torch.bfloat16
        assert [h.dtype for h in output.hidden_states[1:-1]] == [stream] * (len(loaded.model.layers) - 1)
        assert output.hidden_states[-1].dtype == torch.bfloat16  # after the final norm, for the LM head
        loaded.config.residual_in_fp32 = not residual_in_fp32
        for layer in loaded.model.layers:
            layer.residual_in_fp32 = not residual_in_fp32
        assert not torch.equal(loaded(ids).logits, output.logits)
        assert torch.isfinite(output.logits).all()


def test_bfloat16_checkpoint_keeps_the_s4d_kernel_in_float32(tmp_path):
    """S4D's kernel raises Ā to powers up to the sequence length: with Δ, A, B and C in bfloat16 a 1,000-step kernel
    was 37% off. Loaded in bfloat16, they stay float32 and the kernel is the float32 model's."""
    from serpent_hf.modeling_serpent_classification import SeRpEntForSequenceClassification

    torch.manual_seed(0)
    config = tiny_config(ssm_type="s4d", bidirectional=True, state_size=64, compression_rates=[1.0], num_labels=3)
    model = SeRpEntForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    loaded = SeRpEntForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    mixer, reference = loaded.model.layers[0].branches[0].mixer, model.model.layers[0].branches[0].mixer
    assert mixer.output_linear.weight.dtype == torch.bfloat16
    assert {p.dtype for p in (mixer.log_dt, mixer.log_A_real, mixer.A_imag, mixer.B, mixer.C, mixer.D)} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(mixer.kernel(1000), reference.kernel(1000), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_model_built_in_half_precision_keeps_the_same_parameters_in_float32_as_a_loaded_one(tmp_path, dtype):
    """_from_config / AutoModelForCausalLM.from_config(dtype=...) keep A_log, D and θ_Δ (`selectivity`) in float32,
    as from_pretrained does, and initialise them in float32 (A_log = log n exactly)."""
    tiny_model(seed=6, sharp=False).save_pretrained(tmp_path)  # tied, as tiny_config() builds it
    loaded = SeRpEntForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    built = {"_from_config": SeRpEntForCausalLM._from_config(tiny_config(), dtype=dtype),
             "Auto from_config": AutoModelForCausalLM.from_config(tiny_config(), dtype=dtype)}
    expected = {name: p.dtype for name, p in loaded.named_parameters()}
    kept = {dtype for name, dtype in expected.items() if name.endswith(("A_log", ".D", "selectivity.weight"))}
    assert kept == {torch.float32}
    assert expected["model.embeddings.weight"] == dtype
    for how, model in built.items():
        assert {name: p.dtype for name, p in model.named_parameters()} == expected, how
        A_log = model.model.layers[0].branches[0].mixer.A_log
        assert torch.equal(A_log[0], torch.log(torch.arange(1, A_log.shape[1] + 1, dtype=torch.float32))), how
