"""SeRpEnt as a transformers model: pretrained base, base model, causal LM and classifier heads.

The architecture lives in `modeling/` (plain PyTorch); this file adds what transformers users
expect: config-driven construction, weight initialisation, safetensors save/load, gradient
checkpointing, a loss, `generate()` through `SeRpEntCache`, and input validation that names
the problem.

    SeRpEntModel:        embeddings -> SeRpEntLayer × num_hidden_layers -> RMSNorm (norm_f)
    SeRpEntForCausalLM:  SeRpEntModel -> lm_head (tied to the embeddings by default)
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .cuda_graphs import decode_one_token
from .cache import SeRpEntCache
from .compat import CACHE_NAME, cache_field_named_for_this_release, resolve_cache
from .configuration_serpent import SeRpEntConfig
from .modeling import (
    Branch,
    ConcatProjection,
    GaussianBasis,
    MambaMixer,
    RMSNorm,
    S4DMixer,
    SeRpEntBlock,
    SelectivityNetwork,
    host_reads_are_free,
    rate_loss,
)


@cache_field_named_for_this_release
@dataclass
class SeRpEntModelOutput(ModelOutput):
    """
    last_hidden_state: (batch, length, hidden_size) after the final norm.
    cache (`past_key_values` before transformers 5.24): SeRpEntCache with the state after the last
        token (when use_cache).
    hidden_states: the input of every block and the final output (when output_hidden_states).
    compressed_lengths: (layers, batch, branches) compressed samples each branch produced in this call.
    deltas: (layers, batch, branches, length) Δ of every element (when output_deltas), 0 on padding.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: SeRpEntCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    compressed_lengths: torch.LongTensor | None = None
    deltas: torch.DoubleTensor | None = None


def share_of_accumulated_batch(labels, loss_kwargs):
    """The share of an optimizer step's predicted tokens that these labels hold. With `num_items_in_batch` (the
    Trainer's count over all accumulated micro-batches and processes) the cross-entropy is a sum over that count and
    the Trainer does not divide the loss by the accumulation steps, so a per-batch mean such as the rate term must be
    weighted by this share to count once per step; without it, 1."""
    total = loss_kwargs.get("num_items_in_batch")
    if total is None:
        return 1.0
    targets = loss_kwargs.get("shift_labels")
    targets = labels[..., 1:] if targets is None else targets
    return targets.ne(-100).sum() / total


@cache_field_named_for_this_release
@dataclass
class SeRpEntCausalLMOutput(ModelOutput):
    """loss: shifted next-token cross-entropy (when labels), plus config.rate_loss_coef · rate_loss in training mode;
    logits: (batch, length, vocab); rate_loss: the rate term (when labels and rate_loss_coef > 0; modeling/rate_loss.py,
    reported in evaluation too, where it is not added to the loss), after the
    logits so that, as in every transformers causal LM, a tuple output holds the loss and then the logits; the rest as
    SeRpEntModelOutput."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    rate_loss: torch.FloatTensor | None = None
    cache: SeRpEntCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    compressed_lengths: torch.LongTensor | None = None
    deltas: torch.DoubleTensor | None = None


class LayersOutput(NamedTuple):
    """SeRpEntModel.run_layers: the output after the final norm, every layer's input, every layer's list of
    BranchState (None unless kept), the θ_Δ window after the input, compressed samples (layers, b, branches) and Δ
    (layers, b, branches, l)."""

    hidden_states: torch.Tensor
    inputs: tuple
    states: list
    selectivity_state: torch.Tensor | None
    compressed_lengths: torch.Tensor
    deltas: torch.Tensor


class DecodingStepOutput(NamedTuple):
    """SeRpEntModel.decoding_step: hidden state (b, d), compressed samples (layers, b, branches), Δ (layers, b,
    branches, 1)."""

    hidden_states: torch.Tensor
    compressed_lengths: torch.Tensor
    deltas: torch.Tensor


# Arguments generate() passes to prepare_inputs_for_generation for its own loop; transformers does not
# forward them to the model either (our prompt slicing reads the cache instead).
GENERATION_BOOKKEEPING = ("labels", "next_sequence_length", "is_first_iteration")


def check_no_padding_between_real_tokens(attention_mask, started=None):
    """Padding may come before a row's first real token (left padding) or after its last (right padding), where it
    moves no clock and no real token reads it. Between real tokens it would not be skipped: the Mamba convolution
    and the compression's K-neighbour window would read it as input, so such a mask is refused. started (b,) bool:
    the rows whose cache holds real tokens already, before this mask's first position."""
    mask = attention_mask.bool()
    real_before = mask.cumsum(dim=1) > 0
    if started is not None:
        real_before = real_before | started.unsqueeze(-1)
    real_after = mask.flip(1).cumsum(dim=1).flip(1) > 0
    hole = real_before & real_after & ~mask
    if hole.any():
        row, position = (int(i) for i in hole.nonzero()[0])
        earlier = " (the cache holds real tokens of this row)" if started is not None and bool(started[row]) else ""
        raise ValueError(
            f"attention_mask has padding between real tokens (row {row}, position {position}{earlier}): SeRpEnt skips "
            "padding only before a row's first real token or after its last; remove the padding from the middle of "
            "the row"
        )


def unconsumed_ids(input_ids, consumed, prompt_as_embeddings):
    """The ids a cache that consumed `consumed` tokens has not seen: (b, L) -> (b, L - consumed).

    With a prompt given as embeddings the ids hold only the tokens generated after it (transformers' convention):
    the last of them is new. Otherwise ids no longer than what the cache consumed leave nothing to feed: the cache
    holds no logits, so the next token cannot be predicted, and feeding the last id again would count it twice."""
    if input_ids.shape[1] > consumed or consumed == 0:  # (no ids at all: the forward pass names the empty input)
        return input_ids[:, consumed:].contiguous()
    if prompt_as_embeddings:
        return input_ids[:, -1:].contiguous()
    raise ValueError(
        f"the cache has consumed {consumed} tokens and input_ids holds {input_ids.shape[1]}, so no token is new and "
        "there is nothing to predict from: give generate() the ids with at least one token the cache has not seen "
        "(e.g. build the cache from input_ids[:, :-1])"
    )


class SeRpEntLayer(GradientCheckpointingLayer, SeRpEntBlock):
    """A SeRpEnt block (modeling/block.py) that transformers can checkpoint.

    modeling/ does not import transformers, so the block gains transformers' GradientCheckpointingLayer here:
    `gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)` and `_disable` then switch each layer's
    checkpoint, with its options (`use_reentrant`), exactly as in transformers' own models. A decoding step,
    which advances the cache in place, must not be recomputed: SeRpEntModel.forward refuses one under checkpointing
    with gradients."""


class SeRpEntPreTrainedModel(PreTrainedModel):
    config_class = SeRpEntConfig
    config: SeRpEntConfig
    base_model_prefix = "model"
    _no_split_modules = ["SeRpEntLayer"]
    supports_gradient_checkpointing = True
    _is_stateful = True  # no assisted generation: a recurrent state cannot be rolled back
    # The SSM's A and D (S4D's Δ, A, B and C too: its kernel raises Ā to powers in the thousands, which bfloat16's 8
    # bits cannot carry), and the selectivity network θ_Δ (whose output decides the clock), stay in float32 when a
    # checkpoint is loaded in float16 or bfloat16.
    _keep_in_fp32_modules_strict = ["A_log", "D", "log_dt", "log_A_real", "A_imag", "B", "C", "selectivity"]

    def post_init(self):
        self._keep_fp32_parameters_in_fp32()  # before the weights are initialised, so their initial values are float32
        super().post_init()

    def _keep_fp32_parameters_in_fp32(self):
        """A model built in float16 or bfloat16 (`_from_config(config, dtype=...)`, `from_config`) creates the
        parameters named in `_keep_in_fp32_modules_strict` in float32, as `from_pretrained` loads them."""
        keep = set(self._keep_in_fp32_modules_strict)
        for module_name, module in self.named_modules():
            for name, parameter in list(module.named_parameters(recurse=False)):
                named = keep.intersection(f"{module_name}.{name}".split("."))
                if named and parameter.dtype in (torch.float16, torch.bfloat16):
                    module.register_parameter(name, nn.Parameter(parameter.detach().float(), parameter.requires_grad))

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (MambaMixer, S4DMixer, SelectivityNetwork, GaussianBasis)):
            for name, value in module.initial_parameters().items():
                parameter = module.get_parameter(name)
                init.copy_(parameter, value.to(parameter.device, parameter.dtype))
        if isinstance(module, ConcatProjection) and self.config.projection_init == "identity":
            init.copy_(module.weight, self._identity_projection().to(module.weight))
        if isinstance(module, MambaMixer):
            # Mamba's choices: PyTorch's default (Kaiming-uniform) conv and output projection.
            init.kaiming_uniform_(module.conv1d.weight, a=5**0.5)
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            init.kaiming_uniform_(module.out_proj.weight, a=5**0.5)
            if self.config.rescale_prenorm_residual:
                module.out_proj.weight /= self.config.num_hidden_layers**0.5


    def resampling_parameters(self):
        """{"selectivity": θ_Δ's parameters, "compressed_branches": every other parameter of the branches with κ < 1},
        found by module, not by name (an adapter or a wrapper renames parameters): the groups SeRpEntTrainer gives
        their own learning rates."""
        selectivity = [p for m in self.modules() if isinstance(m, SelectivityNetwork)
                       for p in m.parameters()]
        chosen = {id(p) for p in selectivity}
        compressed = [p for m in self.modules() if isinstance(m, Branch) and m.resampler is not None
                      for p in m.parameters() if id(p) not in chosen]
        return {"selectivity": selectivity, "compressed_branches": compressed}

    def _identity_projection(self):
        """The concat projection (d, branches · d) of projection_init "identity" (see SeRpEntConfig)."""
        hidden, rates = self.config.hidden_size, self.config.compression_rates
        shares = [float(rate == 1.0) for rate in rates] if 1.0 in rates else [1.0 / len(rates)] * len(rates)
        return torch.cat([share * torch.eye(hidden) for share in shares], dim=1)


class SeRpEntModel(SeRpEntPreTrainedModel):
    def __init__(self, config: SeRpEntConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            SeRpEntLayer(config, causal=not config.bidirectional) for _ in range(config.num_hidden_layers)
        )
        self.norm_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        # delta_source "embedding": θ_Δ of every compressed branch, in one module that plans every clock
        # before the first block (modeling/selectivity.py).
        self.selectivity = None
        if config.delta_source == "embedding" and config.compressed_branches:
            self.selectivity = SelectivityNetwork(
                config.hidden_size, config.num_hidden_layers * len(config.compressed_branches), config.delta_window,
                embedding_std=config.initializer_range, bias_init=config.delta_bias_init,
            )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    def empty_cache(self, batch_size, device=None, dtype=None):
        device = device or self.embeddings.weight.device
        dtype = dtype or self.embeddings.weight.dtype
        layer_states = [layer.empty_state(batch_size, device, dtype) for layer in self.layers]
        selectivity_state = None if self.selectivity is None else self.selectivity.empty_state(batch_size, device)
        started = torch.zeros(batch_size, dtype=torch.bool, device=device)
        return SeRpEntCache(self.config, layer_states, started, selectivity_state=selectivity_state)

    def layer_logits(self, logits):
        """θ_Δ's logits of every compressed branch (..., layers · C) -> one (..., C) per layer (None without them).
        A layer receives its logits as one tensor (a reentrant checkpoint passes gradients only through positional
        tensors) and splits them by branch itself (SeRpEntBlock.branch_logits)."""
        if logits is None:
            return [None] * len(self.layers)
        return list(logits.chunk(len(self.layers), dim=-1))

    def run_layers(self, hidden_states, valid=None, cache=None, keep_state=False, decoding_step=False):
        """Embeddings (b, l, d), or (b, d) for a decoding step -> LayersOutput; every layer's state starts from
        `cache` (None: a fresh sequence). The one loop over the layers, for a forward pass and for a decoding step
        (which advances the cache in place)."""
        logits, selectivity_state = None, None
        if self.selectivity is not None:  # every clock is planned here, from the token embeddings
            previous = None if cache is None else cache.selectivity_state
            logits, selectivity_state = self.selectivity(hidden_states, valid, previous, decoding_step)
        inputs, states, deltas, lengths = [], [], [], []
        for index, (layer, layer_logits) in enumerate(zip(self.layers, self.layer_logits(logits))):
            inputs.append(hidden_states)
            previous = None if cache is None else cache.layer_states[index]
            # Tensors positional: a reentrant checkpoint passes gradients only through positional inputs (θ_Δ's logits
            # too), and back only through the tensors it returns (Δ: BlockOutput). The flags by keyword: hooks
            # (accelerate's offloading) read decoding_step there.
            hidden_states, state, layer_deltas, layer_lengths = layer(
                hidden_states, valid, previous, layer_logits, return_state=keep_state, decoding_step=decoding_step)
            states.append(state)
            deltas.append(layer_deltas)
            lengths.append(layer_lengths)
        deltas = torch.stack(deltas)
        return LayersOutput(self.norm_f(hidden_states), tuple(inputs), states, selectivity_state, torch.stack(lengths),
                            deltas.unsqueeze(-1) if decoding_step else deltas)

    def decoding_step(self, embeddings, cache):
        """One token for every row: its embedding (b, d) -> DecodingStepOutput (hidden state (b, d) after the final
        norm, compressed samples (layers, b, branches), Δ (layers, b, branches, 1)); `cache` is advanced in place.
        What a captured CUDA graph records (cuda_graphs.py)."""
        output = self.run_layers(embeddings, cache=cache, decoding_step=True)
        return DecodingStepOutput(output.hidden_states, output.compressed_lengths, output.deltas)

    def _validate_inputs(self, input_ids, inputs_embeds, attention_mask, cache):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None and input_ids.dim() != 2:
            hint = " (one sequence: add the batch axis, input_ids[None])" if input_ids.dim() == 1 else ""
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}{hint}")
        if inputs_embeds is not None:
            self._check_embeddings(inputs_embeds)
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if length == 0 and (cache is None or cache.num_tokens == 0):
            raise ValueError("empty input: the sequence has length 0 (give at least one token, e.g. a BOS token)")
        # Ids and the mask are read on the host at prefill and wherever a read is free; a compiled or GPU decoding
        # step reads nothing (its ids come from generate's own sampling, and nn.Embedding still refuses one out of
        # range; generate passes it no mask).
        device = (input_ids if input_ids is not None else inputs_embeds).device
        may_read = not (cache is not None and length == 1) or host_reads_are_free(device)
        if may_read and input_ids is not None and input_ids.numel() > 0:
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size})")
        if cache is not None:
            cache.check_compatible(self.config, batch)
        if attention_mask is not None:
            past = 0 if cache is None else cache.num_tokens
            if attention_mask.dim() != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] not in (
                length,
                past + length,
            ):
                expected = f"({batch}, {length})" + (f" or ({batch}, {past + length})" if past else "")
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)}; expected {expected} to match the input"
                )
            if may_read:  # a mask of the new chunk alone continues the rows the cache has started
                started = cache.started if cache is not None and attention_mask.shape[1] == length else None
                check_no_padding_between_real_tokens(attention_mask, started)
            return attention_mask[:, -length:].bool() if length > 0 else None
        return None

    def _check_embeddings(self, inputs_embeds):
        hidden = self.config.hidden_size
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden:
            shape = tuple(inputs_embeds.shape)
            raise ValueError(f"inputs_embeds must have shape (batch, length, {hidden}), got {shape}")
        bad = ~torch.isfinite(inputs_embeds).all(dim=-1)
        if bad.any():  # NaN would otherwise reach the clock, whose grid cannot be placed on NaN times
            row, position = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"inputs_embeds holds NaN or Inf (first at batch row {row}, position {position})")

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        cache=None,
        use_cache=None,
        output_hidden_states=None,
        output_deltas=False,
        return_dict=None,
        past_key_values=None,
        **kwargs,
    ):
        r"""
        attention_mask: (batch, length), or (batch, past + length) with a cache; 0 marks padding, which
            does not move the clock and is invisible to every real token. Padding goes before a row's first real
            token or after its last; a mask with padding between real tokens is refused.
        cache: a SeRpEntCache to continue from (returned by the previous call with use_cache=True);
            `past_key_values` is the same argument under its name before transformers 5.24.
        output_deltas: also return Δ of every element, per layer and branch (on a one-token step too).
        """
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        use_cache = (use_cache if use_cache is not None else self.config.use_cache and not self.training) and not checkpointing
        cache = resolve_cache(cache, past_key_values)
        if self.config.bidirectional and (use_cache or cache is not None):
            raise ValueError("a bidirectional model reads later elements, so it has no recurrent cache to return or "
                             "continue from: call it with use_cache=False and no cache")
        valid = self._validate_inputs(input_ids, inputs_embeds, attention_mask, cache)
        hidden_states = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        length = hidden_states.shape[1]

        # An empty cache (model.model.empty_cache) holds valid all-zero states, so any cache is resumed from. A step
        # asked for the hidden states runs as a chunk of length one (the same numbers, exact; slower).
        if self._is_decoding_step(cache, length, valid, checkpointing) and not output_hidden_states:
            hidden_states, lengths, deltas = decode_one_token(self, cache, hidden_states[:, 0])
            cache.record_step()
            output = SeRpEntModelOutput(last_hidden_state=hidden_states.unsqueeze(1), **{CACHE_NAME: cache},
                                        compressed_lengths=lengths, deltas=deltas if output_deltas else None)
            return output if return_dict else output.to_tuple()

        keep_state = use_cache or cache is not None
        layers = self.run_layers(hidden_states, valid, cache, keep_state=keep_state)
        if keep_state:
            # The rows with a real token in this chunk (every row unless the mask or an empty chunk says otherwise).
            started = valid.any(dim=1) if valid is not None else torch.full(
                (len(hidden_states),), length > 0, dtype=torch.bool, device=hidden_states.device)
            if cache is None:
                cache = SeRpEntCache(self.config, layers.states, started, num_tokens=length,
                                     selectivity_state=layers.selectivity_state)
            else:
                cache.record_chunk(layers.states, layers.selectivity_state, length, started)
        output = SeRpEntModelOutput(
            last_hidden_state=layers.hidden_states,
            **{CACHE_NAME: cache},
            hidden_states=layers.inputs + (layers.hidden_states,) if output_hidden_states else None,
            compressed_lengths=layers.compressed_lengths,
            deltas=layers.deltas if output_deltas else None,
        )
        return output if return_dict else output.to_tuple()

    def _is_decoding_step(self, cache, length, valid, checkpointing):
        """Whether this call is one token per row continuing a cache, with no padding: the in-place decoding step."""
        single_step = cache is not None and length == 1 and (
            valid is None or (not torch.compiler.is_compiling() and bool(valid.all())))
        if single_step and checkpointing:
            raise ValueError(
                "a decoding step advances the cache in place, and gradient checkpointing would run it again in the "
                "backward pass: decode under torch.no_grad(), in eval mode, or after gradient_checkpointing_disable()"
            )
        return single_step


def check_generation_mask(input_ids, inputs_embeds, attention_mask):
    """A mask given to generate() must be (batch, length) of the prompt: of input_ids, of inputs_embeds, or of both
    together (a prompt of embeddings continued by ids)."""
    if attention_mask is None:
        return
    prompts = [t for t in (input_ids, inputs_embeds) if isinstance(t, torch.Tensor) and t.dim() >= 2]
    accepted = {tuple(t.shape[:2]) for t in prompts}
    if len(prompts) == 2 and prompts[0].shape[0] == prompts[1].shape[0]:
        accepted.add((prompts[0].shape[0], prompts[0].shape[1] + prompts[1].shape[1]))
    if attention_mask.dim() != 2 or (accepted and tuple(attention_mask.shape) not in accepted):
        expected = " or ".join(str(shape) for shape in sorted(accepted)) or "(batch, length)"
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; generate() expects {expected}, "
                         "the shape of the prompt")


class SeRpEntForCausalLM(SeRpEntPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: SeRpEntConfig):
        super().__init__(config)
        self.model = SeRpEntModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.model.set_input_embeddings(new_embeddings)

    def generate(self, inputs=None, *args, **kwargs):
        """transformers' generate(), after checking the attention mask's shape: transformers drops a mask of all
        ones before the model sees it, so a mask of the wrong shape would otherwise be ignored without a word."""
        check_generation_mask(inputs if inputs is not None else kwargs.get("input_ids"), kwargs.get("inputs_embeds"),
                              kwargs.get("attention_mask"))
        return super().generate(inputs, *args, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # generate() must not create an attention DynamicCache: the first forward creates a SeRpEntCache.
        return False

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, *args):
        """generate() compiles the one-token step (`compile_config`, see the README) only when a compileable cache
        exists before the prefill, so with a compile_config an empty SeRpEntCache is made here for every row
        (after beam or sequence expansion); otherwise the prefill's forward makes it, as before."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, generation_mode, batch_size, *args)
        wants_compile = generation_config.compile_config is not None and not generation_config.disable_compile
        if wants_compile and generation_config.use_cache and model_kwargs.get(CACHE_NAME) is None:
            rows = max(generation_config.num_beams, generation_config.num_return_sequences) * batch_size
            model_kwargs[CACHE_NAME] = self.model.empty_cache(rows)

    def prepare_inputs_for_generation(
        self, input_ids, cache=None, attention_mask=None, inputs_embeds=None, use_cache=True, past_key_values=None,
        **kwargs,
    ):
        """Feed only what the cache has not consumed yet (all of it before the first call), and forward every
        other model kwarg unchanged, as transformers does.

        A prompt given as `inputs_embeds` is fed as embeddings while the cache has not consumed all of it
        (transformers passes the whole prompt's embeddings, also when continuing from a cache); after that, ids.
        """
        cache = resolve_cache(cache, past_key_values)
        consumed = cache.num_tokens if cache is not None else 0
        if inputs_embeds is not None and consumed < inputs_embeds.shape[1]:
            model_inputs = {"inputs_embeds": inputs_embeds[:, consumed:], "input_ids": None}
        else:
            model_inputs = {"input_ids": unconsumed_ids(input_ids, consumed, inputs_embeds is not None)}
        fed = next(value for value in model_inputs.values() if value is not None).shape[1]
        if attention_mask is not None and not (consumed > 0 and fed == 1):
            model_inputs["attention_mask"] = attention_mask  # generated tokens are never padding
        model_inputs.update({CACHE_NAME: cache, "use_cache": use_cache})
        for key, value in kwargs.items():
            if key not in GENERATION_BOOKKEEPING:
                model_inputs.setdefault(key, value)
        return model_inputs

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        cache=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        output_deltas=False,
        return_dict=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ):
        r"""
        labels: (batch, length) token ids; shifted inside (position l predicts labels[l+1]); -100 is ignored.
        logits_to_keep: if an int > 0, compute logits for the last that many positions only (generation);
            if a 1D tensor, the positions to keep.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        charges_rate = labels is not None and self.config.rate_loss_coef > 0
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            past_key_values=past_key_values,  # the base model takes the cache under either name
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_deltas=output_deltas or charges_rate,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        hidden_states = hidden_states[:, keep]
        logits = self.lm_head(hidden_states).float()
        loss = rate = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if charges_rate:
            # A mask may span the cache's tokens too, (b, past + length): Δ covers the new ones only.
            valid = None if attention_mask is None else attention_mask[:, -outputs.deltas.shape[-1]:].bool()
            rate = rate_loss(outputs.deltas, self.config.compressed_branches, valid, self.config.rate_loss_budget)
            if self.training:  # a training term: evaluation's loss (and the perplexity read from it) stays the text's
                loss = loss + self.config.rate_loss_coef * rate * share_of_accumulated_batch(labels, kwargs)
        output = SeRpEntCausalLMOutput(
            loss=loss,
            rate_loss=rate,
            logits=logits,
            **{CACHE_NAME: outputs.get(CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            compressed_lengths=outputs.compressed_lengths,
            deltas=outputs.deltas if output_deltas else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SeRpEntForCausalLM", "SeRpEntModel", "SeRpEntPreTrainedModel"]
