"""save_pretrained -> from_pretrained / Auto* reload gives identical outputs, from safetensors."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM, SeRpEntModel

from .conftest import CONFIGS, tiny_model


def test_save_then_load_gives_identical_logits(tmp_path):
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    ids = torch.randint(3, 97, (2, 33))
    with torch.no_grad():
        expected = model(ids).logits
        for loaded in (SeRpEntForCausalLM.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)):
            assert type(loaded) is SeRpEntForCausalLM
            assert torch.equal(loaded.eval()(ids).logits, expected)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is SeRpEntModel
        assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SeRpEntConfig)


def test_loading_into_a_mismatched_config_names_the_weights(tmp_path):
    tiny_model(seed=2).save_pretrained(tmp_path)
    with pytest.raises(Exception, match="size mismatch|shape|mismatch"):
        SeRpEntForCausalLM.from_pretrained(tmp_path, hidden_size=48)


def test_config_files_in_configs_build_models():
    for name in ("tiny", "small", "base", "tiny-mamba", "small-mamba", "base-mamba"):
        config = SeRpEntConfig.from_pretrained(CONFIGS / f"{name}.json")
        assert config.model_type == "serpent"


def test_mamba_baselines_match_their_serpent_parameter_count():
    def count(config):
        with torch.device("meta"):
            return sum(p.numel() for p in SeRpEntForCausalLM(config).parameters())

    for name in ("tiny", "small", "base"):
        serpent = count(SeRpEntConfig.from_pretrained(CONFIGS / f"{name}.json"))
        baseline_config = SeRpEntConfig.from_pretrained(CONFIGS / f"{name}-mamba.json")
        assert baseline_config.compression_rates == [1.0]
        assert abs(count(baseline_config) - serpent) / serpent < 0.02
