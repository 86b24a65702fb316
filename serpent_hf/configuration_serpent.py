"""SeRpEntConfig: every hyperparameter of a SeRpEnt model, validated on creation.

Mamba's fields keep transformers' `MambaConfig` names and defaults; SeRpEnt adds the branch
rates κ (`compression_rates`), the neighbour count K (`num_neighbors`), the basis size G
(`num_basis`), what the selectivity network θ_Δ reads (`delta_source`, `delta_window`), its
initial bias (`delta_bias_init`) and the SSM family (`ssm_type`); the S4D backend and the classifier add `s4d_init`, `s4d_dt_min`,
`s4d_dt_max`, `dropout` and `pair_classification`. `intermediate_size` and `time_step_rank` are
derived here and nowhere else.
"""

import dataclasses
import difflib
import math
import warnings
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from .remote_code import auto_map, write_code


@strict(accept_kwargs=True)
class SeRpEntConfig(PretrainedConfig):
    r"""
    Args:
        vocab_size: size of the vocabulary.
        hidden_size: width of the residual stream (d).
        num_hidden_layers: number of SeRpEnt blocks.
        state_size: SSM state size per channel (N).
        expand: d_inner = expand · hidden_size inside the Mamba mixer.
        conv_kernel: width of the mixer's causal depthwise convolution.
        compression_rates: one branch per rate κ in (0, 1]; 1.0 is the plain SSM branch.
        num_neighbors: K, elements combined into each compressed sample.
        num_basis: G, Gaussian basis functions of the compression and decompression weights.
        delta_source: what θ_Δ reads. "embedding" (default): the token embeddings, so every branch's clock is a
            function of the token ids, planned before the first block, and generation reproduces the forward
            pass bit for bit at any depth and length. "hidden": the block's normalised input (the paper's
            reading); decoding can then drift from the forward pass (README, "Two sources of Δ").
            Checkpoints saved before this option existed load as "hidden", which is what they computed.
        delta_window: with delta_source "embedding", θ_Δ reads the mean of the last W token embeddings
            (a causal window; 1 = the token's own embedding).
        delta_bias_init: initial bias of θ_Δ (negative keeps a branch near its nominal rate). 0 starts every Δ halfway
            up its range, so every element is near a sample and gets a gradient: on sparse information (a few rare
            tokens among filler) θ_Δ then finds them from the loss alone; on text it cost 0.3-0.5 top-1 points
            (benchmarks/README.md).
        projection_init: initial concat projection of a block with several branches. "identity" (default): the κ = 1
            branch's share is the identity and the compressed branches' shares are zero, so a new block computes
            exactly the Mamba block it contains and the compressed branches grow in from there (without a κ = 1
            branch, every share is I / branches); "random": normal(0, initializer_range), as any Linear (the
            initialisation before the quality study, benchmarks/README.md).
        rate_loss_coef: weight of the rate term in the causal LM's training loss (0 = none, the design's loss): the mean
            over layers and compressed branches of the clock's speed beyond the branch's budget (modeling/rate_loss.py).
            Without it nothing asks a branch to compress.
        rate_loss_budget: the share of a branch's free range (1 - κ) that the rate term leaves uncharged: a branch
            whose M/L stays below κ + budget · (1 - κ) pays nothing. It must be above 0 for θ_Δ to stay selective:
            κ is Δ's floor, so charging every Δ above it drives all of them to the floor (fixed-stride pooling).
        compression_operator: how a compressed sample combines its K neighbours. "gate" (default): a(δ) ⊙ x_n, a
            per-channel weight from the Gaussian basis; "linear": A(δ) x_n with A(δ) = Σ_g φ_g(δ) W_g + diag(b), one
            d × d matrix per basis function (G·d² more parameters per compressed branch; the quality study's
            operator arm, benchmarks/README.md).
        ssm_type: "mamba" (language modelling) or "s4d" (Long Range Arena).
        bidirectional: non-causal model for sequence classification: resampling windows on both sides of
            each grid point, and an S4D backend runs its kernel in both directions. No cache (use_cache is False).
        use_kernels: None = mamba-ssm CUDA kernels when available, True = require, False = PyTorch only.
        use_cuda_graphs: replay each decoding step from a CUDA graph (CUDA only; exact against eager).
        s4d_init: "lin" (A_n = -1/2 + iπn) or "inv" (A_n = -1/2 + i(N/π)(N/(2n+1) - 1)), Gu et al. 2022.
        s4d_dt_min, s4d_dt_max: range of the log-uniform initial S4D step size Δ, one per channel.
        dropout: dropout after the S4D layer's activation (S4's placement).
        pair_classification: the classifier encodes two sequences with the same encoder and classifies
            [u, v, u⊙v, u-v] with an MLP (LRA Retrieval).

    Example:

    ```python
    >>> from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM
    >>> model = SeRpEntForCausalLM(SeRpEntConfig(hidden_size=64, num_hidden_layers=2, vocab_size=256))
    ```
    """

    model_type = "serpent"
    # Outputs that are not predictions: a Trainer's evaluation loop gathers only the logits (it reads this list when
    # not given ignore_keys). The cache field is `past_key_values` before transformers 5.24 (compat.py).
    keys_to_ignore_at_inference = ["cache", "past_key_values", "hidden_states", "compressed_lengths", "deltas",
                                   "rate_loss"]

    vocab_size: int = 50280
    hidden_size: int = 768
    num_hidden_layers: int = 24
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    compression_rates: list[float] | tuple[float, ...] = (1.0, 0.5, 0.25)
    num_neighbors: int = 4
    num_basis: int = 8
    delta_source: str = "embedding"
    delta_window: int = 1
    delta_bias_init: float = -3.0
    projection_init: str = "identity"
    rate_loss_coef: float = 0.0
    rate_loss_budget: float = 0.1
    compression_operator: str = "gate"
    ssm_type: str = "mamba"
    bidirectional: bool = False
    use_kernels: bool | None = None
    use_cuda_graphs: bool = False
    s4d_init: str = "lin"
    s4d_dt_min: float = 0.001
    s4d_dt_max: float = 0.1
    dropout: float = 0.0
    pair_classification: bool = False
    layer_norm_epsilon: float = 1e-5
    use_bias: bool = False
    use_conv_bias: bool = True
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    residual_in_fp32: bool = True
    time_step_rank: str | int = "auto"
    time_step_scale: float = 1.0
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_init_scheme: str = "random"
    time_step_floor: float = 1e-4
    rescale_prenorm_residual: bool = False
    pooling: str = "mean"
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        self._warn_about_misspelt_keys(kwargs)
        self.compression_rates = [float(rate) for rate in self.compression_rates]
        self.intermediate_size = int(self.expand * self.hidden_size)
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        if self.bidirectional:
            self.use_cache = False  # a non-causal model reads the future: there is no state to continue from
        super().__post_init__(**kwargs)

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        """PretrainedConfig's, plus `auto_map` and the code it names (remote_code.py), so that
        `trust_remote_code=True` loads the folder where serpent-hf is not installed. A model's
        `save_pretrained` and `push_to_hub`, and the Trainer's saves, all save the config here."""
        self.auto_map = auto_map()
        super().save_pretrained(save_directory)
        write_code(save_directory)
        if push_to_hub:
            # PretrainedConfig would upload only the files changed after it listed the folder, before the
            # code is written; push_to_hub saves afresh through this method, code included, and uploads that.
            self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), **kwargs)

    def _warn_about_misspelt_keys(self, extra):
        """Unknown keys are kept as attributes (transformers' rule, which custom fields rely on); one that is
        nearly the name of a field is most likely a typo that would otherwise train with that field's default."""
        known = {f.name for f in dataclasses.fields(self)} | {n for n in dir(type(self)) if not n.startswith("_")}
        known |= {"intermediate_size", "model_type"}  # written to config.json by save_pretrained
        for key in extra:
            close = [] if key in known else difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.8)
            if close:
                warnings.warn(f"{key!r} is not a SeRpEntConfig field (did you mean {close[0]!r}?); it is kept as an "
                              f"attribute and changes nothing in the model", UserWarning, stacklevel=3)

    def validate_architecture(self):
        """Called by `@strict` on creation and on every load: bad values fail here, with their name."""
        super().validate_architecture()
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel",
                    "num_neighbors", "num_basis", "time_step_rank", "delta_window")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SeRpEntConfig.{name} must be a positive integer, got {value!r}")
        for name in type(self).__annotations__:  # NaN passes no comparison below: refuse it (and Inf) first
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"SeRpEntConfig.{name} must be a finite number, got {value}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"SeRpEntConfig.layer_norm_epsilon must be positive (RMSNorm divides by it on an all-zero input), "
                f"got {self.layer_norm_epsilon}"
            )
        rates = self.compression_rates
        if len(rates) == 0:
            raise ValueError("SeRpEntConfig.compression_rates must name at least one branch rate, got []")
        for rate in rates:
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"SeRpEntConfig.compression_rates entries must lie in (0, 1], got {rate} in {rates}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"SeRpEntConfig.compression_rates must not repeat a rate, got {rates}")
        if self.delta_source not in ("embedding", "hidden"):
            raise ValueError(f"SeRpEntConfig.delta_source must be 'embedding' or 'hidden', got {self.delta_source!r}")
        if self.delta_window > 1 and self.delta_source != "embedding":
            raise ValueError(
                f"SeRpEntConfig.delta_window = {self.delta_window} needs delta_source 'embedding' (a window of token "
                "embeddings); with 'hidden' θ_Δ reads one element"
            )
        if not self.rate_loss_coef >= 0.0:
            raise ValueError(f"SeRpEntConfig.rate_loss_coef must be >= 0, got {self.rate_loss_coef}")
        if not 0.0 <= self.rate_loss_budget < 1.0:
            raise ValueError(f"SeRpEntConfig.rate_loss_budget must be in [0, 1), got {self.rate_loss_budget}")
        if self.rate_loss_coef > 0.0 and not self.compressed_branches:
            raise ValueError(
                f"SeRpEntConfig.rate_loss_coef = {self.rate_loss_coef} needs a compressed branch (a rate κ < 1 in "
                f"compression_rates, got {rates}): the rate term charges compressed branches only"
            )
        if self.projection_init not in ("identity", "random"):
            raise ValueError(
                f"SeRpEntConfig.projection_init must be 'identity' or 'random', got {self.projection_init!r}"
            )
        if self.compression_operator not in ("gate", "linear"):
            raise ValueError(
                f"SeRpEntConfig.compression_operator must be 'gate' or 'linear', got {self.compression_operator!r}"
            )
        if self.ssm_type not in ("mamba", "s4d"):
            raise ValueError(f"SeRpEntConfig.ssm_type must be 'mamba' or 's4d', got {self.ssm_type!r}")
        if self.hidden_act != "silu":
            raise ValueError(f"SeRpEntConfig.hidden_act must be 'silu' (Mamba's gate), got {self.hidden_act!r}")
        if self.time_step_init_scheme not in ("random", "constant"):
            raise ValueError(
                f"SeRpEntConfig.time_step_init_scheme must be 'random' or 'constant', got {self.time_step_init_scheme!r}"
            )
        if not 0.0 < self.time_step_min <= self.time_step_max:
            raise ValueError(
                f"SeRpEntConfig needs 0 < time_step_min <= time_step_max, got {self.time_step_min}, {self.time_step_max}"
            )
        if self.ssm_type == "s4d" and self.state_size % 2:
            raise ValueError(
                "SeRpEntConfig.state_size must be even with ssm_type 's4d' (N/2 complex conjugate pairs), "
                f"got {self.state_size}"
            )
        if self.s4d_init not in ("lin", "inv"):
            raise ValueError(f"SeRpEntConfig.s4d_init must be 'lin' or 'inv', got {self.s4d_init!r}")
        if not 0.0 < self.s4d_dt_min <= self.s4d_dt_max:
            raise ValueError(
                f"SeRpEntConfig needs 0 < s4d_dt_min <= s4d_dt_max, got {self.s4d_dt_min}, {self.s4d_dt_max}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SeRpEntConfig.dropout must lie in [0, 1), got {self.dropout}")
        if self.pooling not in ("mean", "last"):
            raise ValueError(f"SeRpEntConfig.pooling must be 'mean' or 'last', got {self.pooling!r}")

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # A config written by save_pretrained (it records transformers_version) before delta_source existed
        # computed Δ from the hidden states: it loads as "hidden", so the checkpoint computes what it computed.
        if "transformers_version" in config_dict and "delta_source" not in config_dict:
            config_dict = {**config_dict, "delta_source": "hidden"}
        return super().from_dict(config_dict, **kwargs)

    @property
    def compressed_branches(self):
        """{branch index: κ} of every branch that resamples (κ < 1), in order: the one answer to "which branches
        compress" for the model, its Trainer, plots and model card."""
        return {index: rate for index, rate in enumerate(self.compression_rates) if rate < 1.0}

    @property
    def layer_types(self):
        return ["linear_attention"] * self.num_hidden_layers


__all__ = ["SeRpEntConfig"]
