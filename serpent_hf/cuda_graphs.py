"""One decoding step of SeRpEntModel replayed from a CUDA graph (config.use_cuda_graphs).

Decoding at small batch is dominated by kernel launches: each token runs hundreds of tiny
kernels. A CUDA graph records them once and replays them with one launch. Graphs need fixed
memory addresses, so the step reads and writes static buffers: the token embeddings, every tensor
of the cache's state, and the step's outputs. The decoding step itself is the same
block step as in eager mode (its GPU path has no host synchronisation), so replay is
exact against eager decoding.

The cache's `layer_states` (and the θ_Δ window, `selectivity_state`) are re-pointed at the static buffers when the graph is built, and
`SeRpEntCache` writes reorders (beam search) into those buffers in place.
"""

import torch


def decode_one_token(model, cache, embeddings):
    """SeRpEntModel's decoding step on embeddings (b, d) -> DecodingStepOutput: replayed from a CUDA graph when
    config.use_cuda_graphs and the model is on a GPU (recorded at a cache's first step), else run eagerly."""
    # Under torch.compile (generate's compile_config) the compiler owns the step, CUDA graphs included.
    if not (model.config.use_cuda_graphs and embeddings.is_cuda) or torch.compiler.is_compiling():
        return model.decoding_step(embeddings, cache)
    if cache.decode_step is None:
        cache.decode_step = StaticDecodeStep(model, cache).capture()
    return cache.decode_step(embeddings)


class StaticDecodeStep:
    """Static buffers + the decoding step over them; `capture()` records it in a CUDA graph."""

    def __init__(self, model, cache):
        self.model = model
        self.cache = cache
        weight = model.embeddings.weight
        self.embeddings = torch.zeros(cache.batch_size, weight.shape[1], device=weight.device, dtype=weight.dtype)
        # Static copies of the state; the cache now reads and writes these.
        cache.layer_states = [[state.map(torch.clone) for state in layer] for layer in cache.layer_states]
        if cache.selectivity_state is not None:
            cache.selectivity_state = cache.selectivity_state.clone()
        self.buffers = list(cache.tensors())
        self.outputs = None
        self.graph = None

    def run(self):
        """The eager step over the static buffers (also what the graph records)."""
        self.outputs = self.model.decoding_step(self.embeddings, self.cache)  # advances the buffers in place
        return self.outputs

    def capture(self, warmup=3):
        # Warm up on a side stream (lazy kernel imports, allocator), as torch.cuda.graphs asks,
        # on a copy of the state so that warm-up steps do not advance the real cache.
        saved = [buffer.clone() for buffer in self.buffers]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                self.run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.run()
        for buffer, value in zip(self.buffers, saved):
            buffer.copy_(value)
        return self

    def __call__(self, embeddings):
        self.embeddings.copy_(embeddings)
        if self.graph is None:
            self.run()
        else:
            self.graph.replay()
        return type(self.outputs)(*(tensor.clone() for tensor in self.outputs))
