"""What a decoding step on a CPU reads from a weight: a copy laid out for it, kept until the weight changes.

A decoding step works on a few rows (one per sequence) and runs once per token, so anything it
derives from a parameter (a transpose, A = -exp(A_log)) costs as much as the arithmetic on
the rows themselves. Copies kept on the module:

* the matrix products of a mixer's input projection and of the LM head multiply by Wᵀ stored
  contiguously. By the time a layer's weight is used again (the next token) the other layers
  have pushed it out of the CPU caches, and for a weight as nn.Linear stores it, (out, in) with
  short rows (in = hidden size: 1 KB at 256 channels), CPU BLAS computes x·Wᵀ from memory 2-3x
  slower than x·W' with W' = Wᵀ contiguous (measured on the 2-core EPYC: in_proj 230 -> 90 µs,
  the 4096-token head 650 -> 220 µs at one row; no gain for the (256, 512) out_proj);
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
plain attributes, never saved with the model. Cost: a second copy of those weights (16 MB for
`small`), held from the first decoding step on.
"""

import torch
from torch import nn
from torch.nn.modules import module as module_hooks


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
    and not for parameters created under inference_mode (they keep no version counter, so a change would go unseen)."""
    parameters = list(parameters)
    if x.device.type != "cpu" or any(p.is_inference() for p in parameters):
        return False
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in parameters))


def decoding_copy(module, name, parameters, build):
    """build(*parameters), kept on `module` under `name` and rebuilt when one of `parameters` has changed."""
    key = tuple((p._version, p.data_ptr(), p.dtype) for p in parameters)
    cached = module.__dict__.get(name)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            cached = (key, build(*parameters))
        setattr(module, name, cached)
    return cached[1]


def decoding_linear(linear, x):
    """linear(x) for the few rows of a decoding step, computed as x·W' + bias on a CPU."""
    if not is_plain(linear) or not uses_copies(x, linear.parameters()):
        return linear(x)
    weight = decoding_copy(linear, "_decoding_weight", [linear.weight], lambda w: w.t().contiguous())
    output = torch.matmul(x, weight)
    return output if linear.bias is None else output.add_(linear.bias)


__all__ = ["decoding_copy", "decoding_linear", "is_plain", "uses_copies"]
