"""Kernel dispatch: the one place that decides between mamba-ssm's CUDA kernels and PyTorch.

`mamba_ssm` is optional (extra `cuda`) and is imported lazily, the first time a CUDA tensor
asks for it, never at module load. A missing or broken install (no package, a compiled
extension that fails to load) falls back to the PyTorch reference with one warning.

`use_kernels`: None = use the kernels when they can run, True = require them (error if they
cannot), False = always PyTorch.
"""

import functools
import warnings

from .scan import selective_scan


class KernelsUnavailableError(ImportError):
    pass


@functools.lru_cache(maxsize=None)
def _load_selective_scan_kernel():
    """Returns (selective_scan_fn, None) or (None, reason)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # ImportError, or OSError/RuntimeError from a broken compiled extension
        return None, f"{type(error).__name__}: {error}"
    return selective_scan_fn, None


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason):
    warnings.warn(
        "mamba-ssm CUDA kernels are unavailable, using the PyTorch selective scan "
        f"(install the `cuda` extra: pip install 'serpent-hf[cuda]'). Reason: {reason}",
        stacklevel=3,
    )


def selective_scan_dispatch(x, delta, A, B, C, D, initial_state=None, use_kernels=None):
    """Same contract as `scan.selective_scan`: x, delta (b, l, d); B, C (b, l, n) -> y (b, l, d), final state.

    The CUDA kernel starts from a zero state, so a scan that continues from a cached state
    (multi-token forward with a cache) always runs the reference.
    """
    if use_kernels is False or not x.is_cuda or initial_state is not None:
        if use_kernels is True and not x.is_cuda:
            raise KernelsUnavailableError("use_kernels=True needs CUDA tensors; the model is on " + str(x.device))
        return selective_scan(x, delta, A, B, C, D, initial_state)
    kernel, reason = _load_selective_scan_kernel()
    if kernel is None:
        if use_kernels is True:
            raise KernelsUnavailableError(f"use_kernels=True but mamba-ssm cannot be imported ({reason})")
        _warn_fallback(reason)
        return selective_scan(x, delta, A, B, C, D, initial_state)
    # Kernel layout is channels-first: u, delta (b, d, l); B, C (b, n, l). Δ is final (softplus done, 0 on skipped steps).
    y, last_state = kernel(
        x.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A.float().contiguous(),
        B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(),
        D.float(),
        delta_softplus=False,
        return_last_state=True,
    )
    return y.transpose(1, 2), last_state
