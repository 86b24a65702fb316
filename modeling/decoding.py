"""What a decoding step on a CPU reads from a weight: a copy laid out for it, kept until the weight changes.

A decoding step works on a few rows (one per sequence) and runs once per token, so anything it
derives from a parameter (a transpose, A = -exp(A_log)) costs as much as the arithmetic on
the rows themselves. By the time a layer's weight is used again (the next token) the other
layers have pushed it out of the CPU caches. Copies kept (measured on the 2-core EPYC, one thread,
every weight of a token used in turn, as in a decoding step):

* the projections of a step of two or more rows (a mixer's in_proj and out_proj, a block's
  concat projection, the LM head) multiply by the weight packed in oneDNN's blocked layout
  (`_reorder_linear_weight`, the form torch.compile's CPU backend gives frozen
  weights): CPU BLAS repacks a weight on every call, which at a few rows costs as much as the
  product. At 16 rows: in_proj 235 -> 163 µs, out_proj 109 -> 82 µs, the 4096-token head
  945 -> 502 µs; at hidden 768 (`base`) in_proj 2.3 -> 1.1 ms, the 50280-token head 39 -> 17 ms.
* a one-row step of a wide projection (in_proj, the head: more outputs than inputs) multiplies
  x·W' by W' = Wᵀ stored contiguously; nn.Linear's (out, in) layout with its short rows is read
  about 2x slower from memory (in_proj 151 -> 68 µs, the 4096-token head 587 -> 248 µs). At one
  row packing does not pay, and out_proj and the concat projection (more inputs than outputs)
  are faster called as they are (out_proj 58 µs, 71 µs with W').
* a mixer's Aᵀ = -exp(A_log)ᵀ in scan.py's (n, d) layout and its conv taps laid out (k, d):
  deriving them costs three small kernels per step, and the strided taps make the conv step's
  product about 1.6x slower at 16 rows.

A copy stands only for a module that computes nothing but its product (`is_plain`): a LoRA
adapter (peft), a quantised Linear or a forward hook changes what the module computes, so such a
module is called instead. The conv dispatch and the fused CUDA training kernel (kernels.py),
which read weights themselves, follow the same rule.

A copy is rebuilt whenever one of its parameters changes (another version counter, storage or
dtype), so optimiser steps and load_state_dict are seen at once. Copies are used only where
no gradient must reach the parameters and only on a CPU: on a GPU, BLAS reads either layout at
full speed, and a captured CUDA graph must recompute them from the live parameters. Nor are
they used for parameters created under inference_mode, which keep no version counter. They are
kept in a table beside the modules (`kept_copies`), so deepcopy, pickling and saving the model
never see them (a packed weight has no storage to copy). Cost: copies of the projection weights,
built at first use: for `small` 16 MB at batch 1, up to 41 MB when a model decodes both one row
and several (the W' and the packed copy of in_proj and the head).
"""

import functools
import weakref

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

# A step of at least this many rows multiplies by a packed weight: at one row, x·W' (or the module) is faster.
PACKED_MIN_ROWS = 2
PACKING_ROWS_HINT = 16  # the rows oneDNN lays the packed weight out for; 2..64 measure alike, all rows work

_KEPT = weakref.WeakKeyDictionary()  # module -> {name: (key, copy)}


def any_global_hooks():
    """Whether forward hooks are registered for every module (torch.nn.modules.module.register_module_forward_hook)."""
    return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)


def is_plain(module, kind=nn.Linear):
    """Whether calling `module` computes what `kind` (nn.Linear, nn.Conv1d) computes from its weight and bias
    and nothing else, so that its weight may stand for it: an instance with `kind`'s own forward, a plain
    Parameter as weight, no forward hooks (its own or ones registered for every module) and no forward
    replaced on the instance (accelerate's offloading hooks do that). A LoRA-wrapped (peft), quantised or
    hooked module is not."""
    return (
        isinstance(module, kind)
        and type(module).forward is kind.forward
        and "forward" not in vars(module)
        and type(module.weight) is nn.Parameter
        and not (module._forward_hooks or module._forward_pre_hooks or any_global_hooks())
    )


def uses_copies(x, parameters):
    """Whether a decoding step on `x` may read copies of `parameters`: on a CPU, with no gradient to reach them,
    and not for parameters created under inference_mode (they keep no version counter, so a change would go unseen).
    A loop rather than any(): this runs several times per layer and token."""
    if x.device.type != "cpu":
        return False
    gradients = torch.is_grad_enabled()
    for parameter in parameters:
        if parameter.is_inference() or (gradients and parameter.requires_grad):
            return False
    return True


def kept_copies(module):
    """The copies kept for `module`, by name (empty until a decoding step builds one)."""
    return {name: value for name, (_, value) in _KEPT.get(module, {}).items()}


def decoding_copy(module, name, parameters, build):
    """build(*parameters), kept for `module` under `name` and rebuilt when one of `parameters` has changed."""
    key = [(p._version, p.data_ptr(), p.dtype) for p in parameters]
    kept = _KEPT.get(module)
    if kept is None:
        kept = _KEPT[module] = {}
    cached = kept.get(name)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            cached = kept[name] = (key, build(*parameters))
    return cached[1]


@functools.lru_cache(maxsize=None)
def packed_products():
    """oneDNN's packed-weight linear as (pack, multiply), or None in a torch build without oneDNN. Its operators
    live in `torch.ops.mkldnn` in the releases so far and in `torch.ops.onednn` on PyTorch's main branch."""
    for namespace in ("onednn", "mkldnn"):
        operations = getattr(torch.ops, namespace)
        if hasattr(operations, "_reorder_linear_weight") and hasattr(operations, "_linear_pointwise"):
            return operations._reorder_linear_weight, operations._linear_pointwise
    return None


def decoding_linear(linear, x):
    """linear(x) for the few rows of a decoding step: on a CPU, the product with a kept copy (see above)."""
    weight, bias = linear.weight, linear.bias
    if not is_plain(linear) or not uses_copies(x, (weight,) if bias is None else (weight, bias)):
        return linear(x)
    rows = x.numel() // x.shape[-1]
    # The packed product is float32 only and has no autograd formula.
    packable = x.dtype == weight.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad)
    products = packed_products() if rows >= PACKED_MIN_ROWS and packable else None
    if products is not None:
        pack, multiply = products
        packed = decoding_copy(linear, "packed_weight", (weight,), lambda w: pack(w, PACKING_ROWS_HINT))
        return multiply(x, packed, bias, "none", [], "")
    if linear.out_features <= linear.in_features:
        return linear(x)
    output = torch.matmul(x, decoding_copy(linear, "transposed_weight", (weight,), lambda w: w.t().contiguous()))
    return output if bias is None else output.add_(bias)


__all__ = ["decoding_copy", "decoding_linear", "is_plain", "kept_copies", "uses_copies"]
