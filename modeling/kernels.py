"""Kernel dispatch: the one place that decides between the CUDA kernels and PyTorch.

Kernels come from the optional packages `mamba-ssm` and `causal-conv1d` (extra `cuda`). They
are imported lazily, the first time a CUDA tensor asks for them, never at module load. A
missing or broken install (no package, a compiled extension that fails to load) falls back to
the PyTorch reference with one warning per reason.

Every function here has the contract of its PyTorch reference, so the model calls one name and
does not care which runs.

`use_kernels` (from the config): None = kernels when they can run, True = require them (error
if they cannot), False = PyTorch only.

    operation                       kernel                                  reference
    scan over a sequence            mamba_ssm selective_scan_fn             scan.selective_scan
    scan step (decoding)            mamba_ssm selective_state_update        scan.selective_state_update
    causal depthwise conv           causal_conv1d_fn                        F.conv1d
    conv step (decoding)            causal_conv1d_update                    shift + dot product
    whole mixer in training         mamba_ssm mamba_inner_fn                (the mixer's own forward)
"""

import functools
import importlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_hooks

from .scan import selective_scan, selective_state_update


class KernelsUnavailableError(ImportError):
    pass


KERNELS = {
    "selective_scan_fn": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "mamba_inner_fn": ("mamba_ssm.ops.selective_scan_interface", "mamba_inner_fn"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "causal_conv1d_fn": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
}


@functools.lru_cache(maxsize=None)
def _load(name):
    """(function, None) or (None, reason)."""
    module_name, attribute = KERNELS[name]
    try:
        return getattr(importlib.import_module(module_name), attribute), None
    except Exception as error:  # ImportError, or OSError/RuntimeError from a broken compiled extension
        return None, f"{module_name}.{attribute}: {type(error).__name__}: {error}"


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason):
    warnings.warn(
        "CUDA kernels are unavailable, using the PyTorch path (install the `cuda` extra: "
        f"pip install 'serpent-hf[cuda]', see the README). Reason: {reason}",
        stacklevel=4,
    )


def is_plain(module, kind=nn.Linear):
    """Whether calling `module` computes what `kind` (nn.Linear, nn.Conv1d) computes from its weight and bias and
    nothing else, so that an operation may read its weight instead of calling it: an instance with `kind`'s own
    forward, a plain Parameter as weight, no forward hooks (its own or ones registered for every module) and no
    forward replaced on the instance (accelerate's offloading does that). A LoRA-wrapped (peft), quantised,
    offloaded or hooked module is not: it is called."""
    return (
        isinstance(module, kind)
        and type(module).forward is kind.forward
        and "forward" not in vars(module)
        and type(module.weight) is nn.Parameter
        and not (module._forward_hooks or module._forward_pre_hooks)
        and not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)
    )


def kernel(name, tensor, use_kernels):
    """The kernel `name` if it should run on `tensor`, else None (after one warning where it was expected)."""
    if use_kernels is False:
        return None
    if not tensor.is_cuda:
        if use_kernels is True:
            raise KernelsUnavailableError(f"use_kernels=True needs CUDA tensors; the model is on {tensor.device}")
        return None
    function, reason = _load(name)
    if function is None:
        if use_kernels is True:
            raise KernelsUnavailableError(f"use_kernels=True but {reason}")
        _warn_fallback(reason)
    return function


def selective_scan_dispatch(x, delta, A, B, C, D, initial_state=None, use_kernels=None):
    """Contract of `scan.selective_scan`: x, delta (b, l, d); B, C (b, l, n) -> y (b, l, d), final state (b, n, d).

    The CUDA kernel starts from a zero state, so a scan that continues from a cached state
    (a multi-token forward with a cache) runs the reference.
    """
    function = kernel("selective_scan_fn", x, use_kernels) if initial_state is None else None
    if function is None:
        return selective_scan(x, delta, A, B, C, D, initial_state)
    # Kernel layout is channels-first: u, delta (b, d, l); B, C (b, n, l).
    # Δ is final (softplus done, 0 on skipped steps).
    # The kernel wants u, Δ, B and C in one dtype; float32, as the reference computes (Δ is float32 under autocast).
    y, last_state = function(
        x.transpose(1, 2).float().contiguous(),
        delta.transpose(1, 2).float().contiguous(),
        A.float().contiguous(),
        B.transpose(1, 2).float().contiguous(),
        C.transpose(1, 2).float().contiguous(),
        D.float(),
        delta_softplus=False,
        return_last_state=True,
    )
    return y.transpose(1, 2), last_state.transpose(1, 2)  # the kernel's (b, d, n) state, seen as (b, n, d)


def selective_state_update_dispatch(state, x, delta, A, B, C, D, use_kernels=None):
    """Contract of `scan.selective_state_update`: `state` (b, n, d) is updated in place; returns y (b, d) float32."""
    function = kernel("selective_state_update", x, use_kernels)
    if function is None:
        return selective_state_update(state, x, delta, A, B, C, D)
    # The Triton kernel indexes the state through its strides: it updates the (b, d, n) view in place.
    # dt_bias is zeros (Δ + 0 is exact) because mamba-ssm 2.3.2's kernel call fails when it is None.
    D = D.float()
    y = function(state.transpose(1, 2), x, delta, A, B, C, D, dt_bias=torch.zeros_like(D), dt_softplus=False)
    return y.float()


def causal_conv_dispatch(context, conv, use_kernels=None):
    """silu(depthwise causal conv) of context (b, d, k-1+l) whose first k-1 columns are history -> (b, d, l).

    conv: the mixer's nn.Conv1d. The kernel and F.conv1d read its weight; a conv1d that computes more (a
    LoRA adapter, offloading hooks) is called instead: the same valid convolution over the context.
    """
    if not is_plain(conv, nn.Conv1d):
        return F.silu(conv(context))
    weight, bias = conv.weight, conv.bias
    function = kernel("causal_conv1d_fn", context, use_kernels)
    if function is None:
        return F.silu(F.conv1d(context, weight, bias, groups=weight.shape[0]))
    # The kernel pads causally by itself; the last l outputs see only the given context.
    return function(context.contiguous(), weight[:, 0], bias, activation="silu")[..., weight.shape[-1] - 1 :]


def conv_step_dispatch(conv_state, x, conv, use_kernels=None):
    """One conv step: conv_state (b, k, d) holds the last k inputs and takes x (b, d) in place -> silu(conv) (b, d).

    conv: the mixer's nn.Conv1d. Like the kernel, the reference reads a plain conv's taps: calling the module on a
    k-element window costs about 10x the product at these sizes (110 against 11 µs for 512 channels on a CPU);
    one that computes more than its weight is called.
    """
    plain = is_plain(conv, nn.Conv1d)
    function = kernel("causal_conv1d_update", x, use_kernels) if plain else None
    if function is None:
        conv_state.copy_(torch.cat([conv_state[:, 1:], x.unsqueeze(1).to(conv_state.dtype)], dim=1))
        window = conv_state.to(x.dtype)
        if not plain:  # a valid convolution of the k-element window: one output per channel
            return F.silu(conv(window.transpose(1, 2)).squeeze(-1))
        out = torch.linalg.vecdot(window, conv.weight[:, 0].t(), dim=1)
        return F.silu(out if conv.bias is None else out + conv.bias)
    # The kernel indexes the state through its strides: it updates the (b, d, k) view in place.
    return function(x, conv_state.transpose(1, 2), conv.weight[:, 0], conv.bias, activation="silu")


def fused_mixer_dispatch(mixer, hidden_states, use_kernels=None):
    """The whole Mamba mixer in one kernel (training, full sequences, no state, no padding), or None.

    The kernel reads the weights of the projections and of conv1d itself, so one that computes more than
    its weight (a LoRA adapter from peft, a hook) keeps the mixer on its unfused path.
    """
    plain = all(is_plain(linear) for linear in (mixer.x_proj, mixer.dt_proj, mixer.out_proj))
    if not (plain and is_plain(mixer.conv1d, nn.Conv1d)):
        return None
    function = kernel("mamba_inner_fn", hidden_states, use_kernels)
    if function is None:
        return None
    return function(
        mixer.in_proj(hidden_states).transpose(1, 2),
        mixer.conv1d.weight,
        mixer.conv1d.bias,
        mixer.x_proj.weight,
        mixer.dt_proj.weight,
        mixer.out_proj.weight,
        mixer.out_proj.bias,
        -torch.exp(mixer.A_log.float()),
        None,  # B and C are input-dependent
        None,
        mixer.D.float(),
        delta_bias=mixer.dt_proj.bias.float(),
        delta_softplus=True,
    )
