"""The model a run trains: a fresh one from a config file, or a checkpoint to fine-tune, matched
to the tokenizer (vocabulary size and special token ids).

The Auto classes know SeRpEnt here because serpent_hf/__init__.py, which Python imports before any
of its subpackages, registers it.
"""

import copy
import logging
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from .. import configs

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
logger = logging.getLogger(__name__)


def resolve_model_config(name):
    """--model_config NAME -> what to load: a local file or folder of that name first (a user's own `tiny/`
    checkpoint wins), then a shipped preset ("tiny", "small-mamba", "lra-listops", ...), else NAME unchanged
    (a Hub name, or a path whose absence the caller reports). A preset never goes to the Hub."""
    if Path(name).exists():
        return name
    preset = configs.model_preset(name)
    return name if preset is None else str(preset)


def missing_model_config(given):
    """The error for a --model_config config file that does not exist."""
    return ValueError(f"--model_config {given} does not exist (presets: {', '.join(configs.model_presets())})")


def read_model_config(path):
    """A config file -> its PretrainedConfig: JSON as `save_pretrained` writes it, or the same fields in YAML (the
    format of the run files), which must name their `model_type` ("serpent", "mamba", ...)."""
    if Path(path).suffix == ".json":
        return AutoConfig.from_pretrained(str(path))
    fields = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(fields, dict) or "model_type" not in fields:
        raise ValueError(f"--model_config {path} must be a mapping of config fields with its model_type "
                         "(e.g. model_type: serpent)")
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    config.name_or_path = str(path)  # as from_pretrained records the file a JSON config came from
    return config


def is_new_model(model_config):
    """True when --model_config names a configuration (a new model with random weights), not a checkpoint."""
    return Path(resolve_model_config(model_config)).suffix in CONFIG_SUFFIXES


def _parameters_at_vocabulary(config, vocab_size):
    """Parameter count of the model of `config` with `vocab_size` entries, built on the meta device (no memory)."""
    config = copy.deepcopy(config)
    config.vocab_size = vocab_size
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config).num_parameters()


def log_vocabulary_growth(config, old_size, new_size, where):
    """Say that the embedding grows to fit the tokenizer, and what that does to the parameter count."""
    before, after = _parameters_at_vocabulary(config, old_size), _parameters_at_vocabulary(config, new_size)
    logger.warning("%s has a vocabulary of %s but the tokenizer has %s ids: the embedding grows to %s entries, "
                   "parameters %s -> %s", where, f"{old_size:,}", f"{new_size:,}", f"{new_size:,}", f"{before:,}",
                   f"{after:,}")


def _special_token_ids(tokenizer):
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}


def build_model(model_config, tokenizer, cache_dir=None):
    """`model_config`: a config file (new model, random weights from the current seed) or a checkpoint
    directory / Hub name (pretrained weights). The vocabulary grows to fit the tokenizer if needed."""
    given, model_config = model_config, resolve_model_config(model_config)
    path = Path(model_config)
    if path.suffix in CONFIG_SUFFIXES:
        if not path.is_file():
            raise missing_model_config(given)
        config = read_model_config(path)
        if len(tokenizer) > config.vocab_size:
            log_vocabulary_growth(config, config.vocab_size, len(tokenizer), f"--model_config {given}")
            config.vocab_size = len(tokenizer)
        for key, value in _special_token_ids(tokenizer).items():
            setattr(config, key, value)
        return AutoModelForCausalLM.from_config(config)
    if (model_config.startswith((".", "/")) or model_config.count("/") > 1) and not path.is_dir():
        raise ValueError(f"--model_config {model_config} is neither a config file nor a checkpoint directory "
                         f"(presets: {', '.join(configs.model_presets())})")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_config, cache_dir=cache_dir)
    except OSError as error:
        raise ValueError(f"could not load the checkpoint {model_config!r}: {error}") from error
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        log_vocabulary_growth(model.config, rows, len(tokenizer), f"the checkpoint {model_config}")
        model.resize_token_embeddings(len(tokenizer))
    for key, value in _special_token_ids(tokenizer).items():
        if getattr(model.config, key, None) is None:
            setattr(model.config, key, value)
    return model


def load_checkpoint(name_or_path, cache_dir=None):
    """Any causal LM checkpoint (SeRpEnt, transformers Mamba, GPT-2, ...) for evaluation."""
    if name_or_path.startswith((".", "/")) and not Path(name_or_path).is_dir():
        raise ValueError(f"checkpoint directory {name_or_path} does not exist")
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, cache_dir=cache_dir)
    except OSError as error:
        raise ValueError(f"could not load the checkpoint {name_or_path!r}: {error}") from error


def count_parameters(model):
    """Distinct parameters, frozen ones included (tied embedding and LM head count once)."""
    return sum(p.numel() for p in model.parameters())


def describe_architecture(model):
    """A few lines of facts about the model for the model card."""
    config = model.config
    facts = {"model_type": config.model_type, "parameters": count_parameters(model), "vocab_size": config.vocab_size}
    for key in ("hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel", "compression_rates",
                "num_neighbors", "num_basis", "ssm_type"):
        if hasattr(config, key):
            facts[key] = getattr(config, key)
    if getattr(config, "rate_loss_coef", 0.0) > 0:  # a training loss, but a reader comparing cards needs to see it
        facts["rate_loss_coef"], facts["rate_loss_budget"] = config.rate_loss_coef, config.rate_loss_budget
    return facts
