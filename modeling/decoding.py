"""Matrix products of a decoding step on a CPU, through a transposed copy of the weight.

A decoding step multiplies a few rows (one per sequence) by every weight matrix of the model,
and by the time a layer's weight is used again (the next token) the other layers have pushed
it out of the CPU caches. For a weight as nn.Linear stores it, (out, in) with short rows
(in = hidden size: 1 KB at 256 channels), CPU BLAS computes x·Wᵀ from memory 2-3x slower than
x·W' with W' = Wᵀ stored contiguously (measured on the 2-core EPYC: in_proj 230 -> 90 µs,
the 4096-token head 650 -> 220 µs at one row; no gain for the (256, 512) out_proj). So the
decoding step of a mixer's input projection and of the LM head multiplies by W', kept on the
module and rebuilt whenever the weight changes (another version counter, storage or dtype).

It costs a second copy of those weights (16 MB for `small`), held from the first decoding
step on. It is used only where no gradient must reach the weight, and only on a CPU (GPU
BLAS reads either layout at full speed).
"""

import torch


def decoding_linear(linear, x):
    """linear(x) for the few rows of a decoding step, computed as x·W' + bias on a CPU."""
    weight = linear.weight
    if x.device.type != "cpu" or (torch.is_grad_enabled() and any(p.requires_grad for p in linear.parameters())):
        return linear(x)
    key = (weight._version, weight.data_ptr(), weight.dtype)
    cached = getattr(linear, "_decoding_weight", None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            cached = (key, weight.t().contiguous())
        linear._decoding_weight = cached
    output = torch.matmul(x, cached[1])
    return output if linear.bias is None else output.add_(linear.bias)


__all__ = ["decoding_linear"]
