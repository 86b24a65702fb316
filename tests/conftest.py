"""Shared fixtures: tiny random models that run in milliseconds on a CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from serpent_hf.modeling import SelectiveResampler
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


def tiny_model(seed=0, **overrides):
    """A random model whose selectivity network is not at its initial (nearly constant) Δ,
    so the resampling decisions actually depend on the tokens."""
    torch.manual_seed(seed)
    model = SeRpEntForCausalLM(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for network in selectivity_networks(model.model):
            network.weight.normal_(0.0, 1.0)
            network.bias.normal_(0.0, 1.0)
    return model


def selectivity_networks(base_model):
    """Every θ_Δ of a SeRpEntModel: the one module reading the embeddings, or each branch's own ("hidden")."""
    if base_model.selectivity is not None:
        return [base_model.selectivity]
    return [branch.resampler.selectivity for layer in base_model.layers for branch in layer.branches
            if branch.resampler is not None]


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
