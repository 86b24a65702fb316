"""Shared fixtures: tiny random models that run in milliseconds on a CPU."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from serpent_hf.modeling import ConcatProjection, SelectiveResampler
from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM
from serpent_hf.compat import CACHE_NAME

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
CORPUS = ROOT / "tests" / "fixtures" / "tiny_corpus.txt"  # a few articles of plain text


# The start of a program that must run without serpent-hf. The interpreter runs with -I (no
# PYTHONPATH, no working directory on sys.path), but the editable install's import hook could still
# find serpent_hf, so a finder placed first refuses it and the old top-level names.
WITHOUT_SERPENT_HF = """
import sys
BLOCKED = {"serpent_hf", "modeling", "training"}

class Blocker:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this must run without serpent-hf")

sys.meta_path.insert(0, Blocker)
"""


def run_without_serpent_hf(program, *args, cwd, modules_cache):
    """Run WITHOUT_SERPENT_HF + program in a fresh interpreter; transformers keeps the code it loads
    from checkpoints in `modules_cache`. Returns the finished process (check its returncode)."""
    env = dict(os.environ, HF_MODULES_CACHE=str(modules_cache), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-I", "-c", WITHOUT_SERPENT_HF + program, *map(str, args)],
                          cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def tiny_config(**overrides):
    fields = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, state_size=4, expand=2, conv_kernel=4,
                  compression_rates=[1.0, 0.5, 0.25], num_neighbors=3, num_basis=4,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  # Every branch reaches the output from the first step, as in a trained model (the default,
                  # "identity", starts the compressed branches' shares at zero).
                  projection_init="random")
    fields.update(overrides)
    return SeRpEntConfig(**fields)


# How sharp the fixture is (issue 25). At init the blocks barely move the logits (every block switched off
# changes them by 6e-3 against a spread of 0.13) and the head is a copy of random embeddings, so tests of
# decoding passed with the blocks zeroed. Scaled like this, the compressed branches alone move the logits by
# about 1.2 against a spread of 3 (tests/test_fixtures.py holds the fixture to that).
LAYER_WEIGHT_GAIN = 3.0  # every Linear inside the blocks, as tests/test_exact_decoding.py's sharp model
PROJECTION_GAIN = 1.0  # each branch's share of the concat projection passes its output at about unit gain
HEAD_GAIN = 3.0  # the LM head, untied from the embeddings: logits with a spread of about 3


def tiny_model(seed=0, sharp=True, **overrides):
    """A random model whose selectivity network is not at its initial (nearly constant) Δ, so the
    resampling decisions actually depend on the tokens, and (sharp=True) whose blocks and compressed
    branches decide its logits: weights scaled as described above, the head its own random matrix."""
    torch.manual_seed(seed)
    if sharp:
        overrides.setdefault("tie_word_embeddings", False)
    model = SeRpEntForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for network in selectivity_networks(model.model):
            network.weight.normal_(0.0, 1.0)
            network.bias.normal_(0.0, 1.0)
        if sharp:
            sharpen(model)
    return model


def sharpen(model):
    """Scale a fresh model's block weights and draw its (untied) head, in place (see LAYER_WEIGHT_GAIN)."""
    hidden = model.config.hidden_size
    for module in model.model.layers.modules():
        if isinstance(module, ConcatProjection):
            module.weight.normal_(0.0, PROJECTION_GAIN / math.sqrt(hidden))
        elif isinstance(module, nn.Linear):
            module.weight.mul_(LAYER_WEIGHT_GAIN)
    if model.lm_head.weight is not model.model.embeddings.weight:
        model.lm_head.weight.normal_(0.0, HEAD_GAIN / math.sqrt(hidden))


def selectivity_networks(base_model):
    """Every θ_Δ of a SeRpEntModel: the one module reading the embeddings, or each branch's own ("hidden")."""
    if base_model.selectivity is not None:
        return [base_model.selectivity]
    return [branch.resampler.selectivity for layer in base_model.layers for branch in layer.branches
            if branch.resampler is not None]


# The tolerance of decoding tests on logits: logits of a step against the full forward pass's. The fixture's
# compressed branches move the logits about 10,000 times as much (tests/test_fixtures.py checks it).
DECODING_TOLERANCE = 1e-4


def assert_steps_match_forward(model, generated, prompt_length, attention_mask=None, rows=None):
    """The logits of every generation step (generate(..., output_logits=True, return_dict_in_generate=True)) equal
    those of one forward pass over the generated sequences, within DECODING_TOLERANCE. attention_mask: the
    prompt's (extended over the new tokens here); rows: which forward rows the steps' rows are (beam search)."""
    sequences = generated.sequences
    steps = torch.stack(generated.logits, dim=1)  # (b, new tokens, vocab)
    if attention_mask is not None:
        extra = sequences.shape[1] - attention_mask.shape[1]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(attention_mask), extra)], dim=1)
    with torch.no_grad():
        full = model(sequences, attention_mask=attention_mask).logits[:, prompt_length - 1 : -1]
    assert steps.shape[1] > 0 and steps.shape == full.shape
    torch.testing.assert_close(steps, full, rtol=0, atol=DECODING_TOLERANCE)


def cache_of(output):
    """The cache in a model output, under the installed transformers' name for it (see serpent_hf.compat)."""
    return getattr(output, CACHE_NAME)


def stepwise_logits(model, ids, prefill):
    """Prefill `prefill` tokens in one parallel call (an empty cache when 0), then one token per call."""
    if prefill > 0:
        out = model(ids[:, :prefill], use_cache=True)
        cache, pieces = cache_of(out), [out.logits]
    else:
        cache, pieces = model.model.empty_cache(ids.shape[0]), []
    for position in range(prefill, ids.shape[1]):
        pieces.append(model(ids[:, position : position + 1], past_key_values=cache).logits)
    return torch.cat(pieces, dim=1), cache


@pytest.fixture
def model():
    return tiny_model()


def random_resampler(rate, seed, hidden=8, neighbors=3, causal=True):
    """A resampler whose Δ varies strongly from element to element."""
    torch.manual_seed(seed)
    resampler = SelectiveResampler(hidden, rate, neighbors, num_basis=4, causal=causal)
    with torch.no_grad():
        resampler.selectivity.weight.normal_(0, 2.0)
        resampler.selectivity.bias.normal_(0, 1.0)
    return resampler
