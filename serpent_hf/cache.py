"""SeRpEntCache: the recurrent state of every layer and branch, for `generate()`.

It holds, per layer and branch, the state of DESIGN.md section 3 (`modeling.state`): last K
elements and their times, the clock, the emitted count, the SSM conv and ssm states and the
last compressed output; and which rows have consumed a real token (for the input checks). Its
size is fixed by the batch size and the config; it never grows with the number of generated
tokens. Each decoding step advances these tensors in place.

It deliberately does not subclass transformers' `Cache`: the attention-cache internals
(`cache_position`, `get_seq_length` on linear layers, layer classes) changed between
transformers releases, and a subclass inherits attention-only methods (`update`, `crop`,
mask creation) that cannot work on a recurrent state. Instead it answers the few questions
generate() asks of any cache, a protocol read from transformers 5.17 and 5.24:

    get_seq_length()          tokens consumed so far (prefill slicing, position ids)
    is_compileable            True: generate() may torch.compile the one-token step
    is_linear                 one True per layer: every layer is a recurrent (linear-attention
                              style) state, so generate() leaves prompt slicing to the model's
                              prepare_inputs_for_generation and builds no attention mask (5.24)
    reorder_cache(beam_idx)   beam search
    batch_repeat_interleave, batch_select_indices   expanding or selecting rows

Attention-mask sizing (`get_mask_sizes`, `is_sliding`, `layers`) is read by transformers' masking
utilities, which attention models call from their forward and this model never does; generate()
builds a mask from a cache only when it is a `Cache` instance.

The cache is returned in the model's output under `cache` (`past_key_values` before
transformers 5.24; see compat.py). A test runs generate() continued from a returned cache.
"""


def config_signature(config):
    """The fields a cache's tensors depend on: a cache built for one signature cannot serve another."""
    return (
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.state_size,
        config.conv_kernel,
        tuple(config.compression_rates),
        config.num_neighbors,
        config.ssm_type,
        config.delta_source,
        config.delta_window,
    )


class SeRpEntCache:
    # Read by generate(): the one-token step may be compiled (given a compile_config; on a GPU by default). Its
    # tensors keep their shapes from token to token, and a step read by torch.compile reads nothing on the host.
    is_compileable = True

    def __init__(self, config, layer_states, started, num_tokens=0, selectivity_state=None):
        self.signature = config_signature(config)
        self.layer_states = layer_states  # list (layers) of list (branches) of BranchState
        # delta_source "embedding" with delta_window W > 1: θ_Δ scores of the last W-1 tokens (b, W-1, P) float64.
        self.selectivity_state = selectivity_state
        # (b,) bool: the rows that have consumed a real token. Padding at the start of a later chunk would lie between
        # real tokens in these rows, where the model refuses it (SeRpEntModel's input checks).
        self.started = started
        self.num_tokens = num_tokens  # tokens consumed so far (including left padding)
        self.decode_step = None  # a StaticDecodeStep (CUDA graph) bound to this cache's tensors, if any

    @property
    def batch_size(self):
        return next(self.tensors()).shape[0]

    def tensors(self):
        for layer in self.layer_states:
            for state in layer:
                yield from state.tensors()
        if self.selectivity_state is not None:
            yield self.selectivity_state
        yield self.started

    @property
    def is_linear(self):
        return [True] * len(self.layer_states)

    def get_seq_length(self, layer_idx=0):
        return self.num_tokens

    def record_chunk(self, layer_states, selectivity_state, length, started):
        """After a forward pass over `length` more elements: its final states (new tensors, which a captured CUDA
        graph does not point at), the count, and the rows with a real token among them (started (b,) bool)."""
        self.layer_states, self.selectivity_state = layer_states, selectivity_state
        self.decode_step = None
        self.num_tokens += length
        self.started = self.started | started

    def record_step(self):
        """After a decoding step, which advanced the states in place: one more token, a real one in every row."""
        self.num_tokens += 1
        self.started.fill_(True)

    def check_compatible(self, config, batch_size):
        """Raise a ValueError naming the mismatch if this cache cannot continue `config` at this batch size."""
        expected = config_signature(config)
        if self.signature != expected:
            names = ("num_hidden_layers", "hidden_size", "intermediate_size", "state_size", "conv_kernel",
                     "compression_rates", "num_neighbors", "ssm_type", "delta_source", "delta_window")
            diffs = [f"{n}: cache {a} vs model {b}" for n, a, b in zip(names, self.signature, expected) if a != b]
            raise ValueError("the cache was built for another model config (" + "; ".join(diffs) + ")")
        if self.batch_size != batch_size:
            message = f"the cache holds {self.batch_size} rows but the input has {batch_size}"
            if batch_size % self.batch_size == 0:  # generate() expands the input, never a cache it is given
                message += (f" (beam search and num_return_sequences expand the batch: first call "
                            f"cache.batch_repeat_interleave({batch_size // self.batch_size}))")
            raise ValueError(message)

    def _apply(self, fn):
        self.layer_states = [[state.map(fn) for state in layer] for layer in self.layer_states]
        if self.selectivity_state is not None:
            self.selectivity_state = fn(self.selectivity_state)
        self.started = fn(self.started)
        self.decode_step = None  # new tensors: a captured graph no longer points at them

    def reorder_cache(self, beam_idx):
        """Beam search: row i of the new state is row beam_idx[i] of the old one (in place, so a
        captured decoding graph stays valid)."""
        for tensor in self.tensors():
            tensor.copy_(tensor.index_select(0, beam_idx.to(tensor.device)))

    def batch_repeat_interleave(self, repeats):
        self._apply(lambda tensor: tensor.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices):
        self._apply(lambda tensor: tensor[indices])

    def memory_bytes(self):
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors())
