"""save_pretrained -> from_pretrained / Auto* reload gives identical outputs, from safetensors."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM, SeRpEntForSequenceClassification, SeRpEntModel

from .conftest import CONFIGS, ROOT, tiny_model


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


def readme_config_rows():
    """{config name: {column: cell}} from the README's tables whose first column is "config"."""
    rows, header = {}, None
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            header = None
        elif cells[0] == "config":
            header = cells
        elif header and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = dict(zip(header, cells))
    return rows


def test_config_files_in_configs_build_the_models_the_readme_describes():
    """Every model config builds its model (on the meta device: no memory), with the width, depth, branch rates and
    parameter count that the README's tables state."""
    rows = readme_config_rows()
    names = sorted(path.stem for path in CONFIGS.glob("*.json") if not path.stem.startswith("train-"))
    assert sorted(rows) == names
    for name in names:
        config = SeRpEntConfig.from_pretrained(CONFIGS / f"{name}.json")
        model_class = SeRpEntForSequenceClassification if config.bidirectional else SeRpEntForCausalLM
        with torch.device("meta"):
            model = model_class(config)
        row = rows[name]
        assert (config.hidden_size, len(model.model.layers)) == (int(row["hidden"]), int(row["layers"])), name
        rates = [float(rate) for rate in row["rates"].split(",")]
        for layer in model.model.layers:
            assert [branch.compression_rate for branch in layer.branches] == rates, name
        assert sum(p.numel() for p in model.parameters()) == int(row["parameters"].replace(",", "")), name


def test_mamba_baselines_match_their_serpent_parameter_count():
    def count(config):
        with torch.device("meta"):
            return sum(p.numel() for p in SeRpEntForCausalLM(config).parameters())

    for name in ("tiny", "small", "base"):
        serpent = count(SeRpEntConfig.from_pretrained(CONFIGS / f"{name}.json"))
        baseline_config = SeRpEntConfig.from_pretrained(CONFIGS / f"{name}-mamba.json")
        assert baseline_config.compression_rates == [1.0]
        assert abs(count(baseline_config) - serpent) / serpent < 0.02


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_delta_source_survives_save_and_load(tmp_path, delta_source):
    # "embedding" is the default, which a config's diff against the defaults could leave out of config.json.
    model = tiny_model(seed=3, delta_source=delta_source, delta_window=2 if delta_source == "embedding" else 1)
    model.save_pretrained(tmp_path)
    loaded = SeRpEntForCausalLM.from_pretrained(tmp_path).eval()
    assert (loaded.config.delta_source, loaded.config.delta_window) == (delta_source, model.config.delta_window)
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_checkpoint_saved_before_delta_source_existed_loads_as_hidden_and_computes_what_it_computed(tmp_path):
    import json

    model = tiny_model(seed=4, delta_source="hidden")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("delta_source", "delta_window", "projection_init"):  # what such a config.json did not have
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.delta_source == "hidden"
    ids = torch.randint(3, 97, (2, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # A config written by hand (no transformers_version) gets today's default.
    assert SeRpEntConfig(**{k: v for k, v in config.items() if k != "transformers_version"}).delta_source == "embedding"


def test_a_new_block_with_identity_projection_computes_the_mamba_block_it_contains():
    """projection_init "identity": the compressed branches' shares start at zero, so a fresh SeRpEnt model is
    exactly the Mamba model made of its κ = 1 branches (the same weights)."""
    from .conftest import tiny_config

    torch.manual_seed(5)
    serpent = SeRpEntForCausalLM(tiny_config(projection_init="identity")).eval()
    mamba = SeRpEntForCausalLM(tiny_config(compression_rates=[1.0])).eval()
    state = {key: value for key, value in serpent.state_dict().items()
             if ".branches.1." not in key and ".branches.2." not in key and ".projection." not in key
             and "selectivity" not in key}
    mamba.load_state_dict(state)
    ids = torch.randint(3, 97, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(serpent(ids).logits, mamba(ids).logits, atol=1e-5, rtol=1e-5)
        projection = serpent.model.layers[0].projection.weight
    assert torch.equal(projection[:, :32], torch.eye(32)) and not projection[:, 32:].any()
