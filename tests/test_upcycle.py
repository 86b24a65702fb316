"""SeRpEnt built from transformers' MambaForCausalLM reproduces its logits."""

import pytest
import torch
from transformers import AutoTokenizer, MambaConfig, MambaForCausalLM

from serpent_hf import SeRpEntForCausalLM
from serpent_hf.training.data import train_bpe_tokenizer
from serpent_hf.upcycle import main, upcycle_mamba

from .conftest import CORPUS


@pytest.fixture(scope="module")
def mamba():
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=101, hidden_size=48, num_hidden_layers=3, state_size=8, expand=2)
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.dt_proj.bias.normal_(0.0, 1.0)  # Δ away from its narrow initial range: the state matters
            layer.mixer.D.normal_(0.0, 1.0)
            layer.norm.weight.uniform_(0.25, 2.0)  # every norm off its initial scale of 1, as in a trained model
        model.backbone.norm_f.weight.uniform_(0.25, 2.0)
    return model


@pytest.mark.parametrize("rates", [(1.0,), (1.0, 0.5, 0.25), (0.5, 1.0)])
def test_upcycled_model_reproduces_mamba_logits(mamba, rates):
    ids = torch.randint(0, 101, (2, 57))
    with torch.no_grad():
        expected = mamba(ids).logits
        got = upcycle_mamba(mamba, rates).eval()(ids).logits
    assert (got - expected).abs().max().item() < 1e-4


def test_upcycle_cli_writes_a_loadable_checkpoint(mamba, tmp_path):
    mamba.save_pretrained(tmp_path / "mamba")
    main(["--mamba", str(tmp_path / "mamba"), "--output_dir", str(tmp_path / "serpent")])
    loaded = SeRpEntForCausalLM.from_pretrained(tmp_path / "serpent").eval()
    ids = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        assert (loaded(ids).logits - mamba(ids).logits).abs().max().item() < 1e-4
    assert not (tmp_path / "serpent" / "tokenizer.json").exists()  # the source had none


def test_upcycle_cli_copies_the_source_tokenizer(mamba, tmp_path):
    source, output = tmp_path / "mamba", tmp_path / "serpent"
    mamba.save_pretrained(source)
    tokenizer = train_bpe_tokenizer([CORPUS.read_text()], 300)
    tokenizer.save_pretrained(source)
    main(["--mamba", str(source), "--output_dir", str(output)])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (output / name).read_bytes() == (source / name).read_bytes(), name
    copied = AutoTokenizer.from_pretrained(output)
    assert copied("The river flows").input_ids == tokenizer("The river flows").input_ids
    assert copied.eos_token == tokenizer.eos_token


def test_upcycling_without_a_rate_one_branch_is_refused(mamba):
    with pytest.raises(ValueError, match="rate-1.0 branch"):
        upcycle_mamba(mamba, (0.5, 0.25))
