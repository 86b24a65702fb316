"""optimize_for_cpu(model): opt-in speed-ups for decoding on a CPU, applied from outside the model.

Nothing in the model imports this file; without it the model computes exactly the same numbers.
A decoding step multiplies a few rows (one per sequence) by every projection, once per token.
At those sizes CPU BLAS spends as long preparing the weight as multiplying by it. Two changes,
each measured on `small` with one thread (benchmarks/README.md, "One decoding path"):

* Wide projections (more outputs than inputs: a mixer's in_proj, the LM head) get their weight
  stored column-major: the same Parameter, shape and values, strides (1, in). At one row x·Wᵀ
  then reads Wᵀ contiguously instead of along W's short rows (about 2x faster from memory).
* Every plain nn.Linear (and concat projection) of at least 64 inputs and outputs (not x_proj and
  dt_proj, whose low-rank side BLAS handles well) becomes a `PackedLinear`, which multiplies a step
  of 2 to 64 rows without gradient by the weight packed once in oneDNN's blocked layout
  (`_reorder_linear_weight`, the form torch.compile's CPU backend gives frozen weights) instead of
  letting BLAS repack it on every call. The packed copy is rebuilt when the weight changes (version
  counter, storage, dtype) and is kept beside the module, so deepcopy, pickling and save_pretrained
  never see it. Anything else (one row, many rows, gradients, float16, a GPU, parameters created
  under inference_mode, a torch without oneDNN) runs nn.Linear's own forward.

Only modules that compute nothing but their product are changed (the kernels' own test,
`kernels.is_plain`): a LoRA-wrapped (peft), quantised or subclassed Linear is left as it is, and so
is a module with forward hooks (its own or ones registered for every module). A model's state_dict
keeps the usual contiguous layout, so saving works unchanged.
"""

import functools
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import ConcatProjection
from .modeling.kernels import is_plain

PACKED_ROWS = range(2, 65)  # at one row the column-major weight is faster; at prefill sizes BLAS packs well itself
PACKING_ROWS_HINT = 16  # the rows oneDNN lays the packed weight out for; 2..64 measure alike

_PACKED = weakref.WeakKeyDictionary()  # PackedLinear -> (key of the weight it was packed from, packed weight)


@functools.lru_cache(maxsize=None)
def packed_products():
    """oneDNN's (pack, multiply) operators, or None in a torch build without them (`torch.ops.mkldnn` in the
    releases so far, `torch.ops.onednn` on PyTorch's main branch)."""
    for namespace in ("onednn", "mkldnn"):
        operations = getattr(torch.ops, namespace)
        if hasattr(operations, "_reorder_linear_weight") and hasattr(operations, "_linear_pointwise"):
            return operations._reorder_linear_weight, operations._linear_pointwise
    return None


class PackedLinear(nn.Linear):
    """nn.Linear that multiplies a decoding step's few rows by its weight packed for oneDNN (see the top)."""

    def forward(self, x):
        if torch.compiler.is_compiling():  # the compiler lays out and packs weights itself (and cannot trace this)
            return F.linear(x, self.weight, self.bias)
        weight, rows = self.weight, x.numel() // max(x.shape[-1], 1)
        gradients = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
        products = packed_products()
        if (rows not in PACKED_ROWS or gradients or products is None or x.device.type != "cpu"
                or not x.dtype == weight.dtype == torch.float32 or weight.is_inference()):
            return F.linear(x, weight, self.bias)
        pack, multiply = products
        key = (weight._version, weight.data_ptr(), weight.dtype)
        kept = _PACKED.get(self)
        if kept is None or kept[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                kept = _PACKED[self] = (key, pack(weight.detach(), PACKING_ROWS_HINT))
        return multiply(x, kept[1], self.bias, "none", [], "")


class PackedConcatProjection(PackedLinear, ConcatProjection):
    """A block's concat projection, multiplied as PackedLinear multiplies."""


PACKED_CLASSES = {nn.Linear: PackedLinear, ConcatProjection: PackedConcatProjection}


def _packable(module):
    """A plain Linear or concat projection (kernels.is_plain: no adapter, hook or replaced forward) of at least
    64 inputs and outputs."""
    return type(module) in PACKED_CLASSES and is_plain(module) and min(module.in_features, module.out_features) >= 64


def _contiguous_state(module, state_dict, prefix, local_metadata):
    for name, tensor in state_dict.items():
        if not tensor.is_contiguous():
            state_dict[name] = tensor.contiguous()


def optimize_for_cpu(model):
    """Apply both changes above to every plain nn.Linear of `model`, in place; returns the model. A weight shared by
    several modules (the LM head tied to the embeddings) is re-laid once, for all of them."""
    # The layer a LoRA adapter (peft) wraps is left alone with its wrapper: peft merges adapters into it by writing
    # to weight.data, which no version counter records, so a packed copy of it would go stale.
    wrapped = {id(module.base_layer) for module in model.modules() if isinstance(getattr(module, "base_layer", None),
                                                                               nn.Module)}
    for module in model.modules():
        if id(module) in wrapped or not _packable(module):
            continue
        module.__class__ = PACKED_CLASSES[type(module)]
        weight = module.weight
        if module.out_features > module.in_features and weight.stride() != (1, weight.shape[0]):
            weight.data = weight.data.t().contiguous().t()
    if not getattr(model, "_serpent_contiguous_state", False):
        model.register_state_dict_post_hook(_contiguous_state)
        model._serpent_contiguous_state = True
    return model


__all__ = ["PackedConcatProjection", "PackedLinear", "optimize_for_cpu"]
