"""Bad input gets a clear error that names the problem."""

import pytest
import torch

from serpent_hf import SeRpEntConfig

from .conftest import tiny_config, tiny_model


@pytest.mark.parametrize(
    "overrides, named",
    [
        (dict(compression_rates=[1.0, 1.5]), "compression_rates"),
        (dict(compression_rates=[0.0]), "compression_rates"),
        (dict(compression_rates=[]), "compression_rates"),
        (dict(compression_rates=[0.5, 0.5]), "compression_rates"),
        (dict(num_neighbors=0), "num_neighbors"),
        (dict(num_basis=0), "num_basis"),
        (dict(hidden_size=-4), "hidden_size"),
        (dict(ssm_type="lstm"), "ssm_type"),
        (dict(time_step_min=0.5, time_step_max=0.1), "time_step_min"),
    ],
)
def test_invalid_config_values_are_named(overrides, named):
    with pytest.raises(Exception, match=named):
        tiny_config(**overrides)


def test_config_round_trips_through_json(tmp_path):
    config = tiny_config(compression_rates=[1.0, 0.3])
    config.save_pretrained(tmp_path)
    assert SeRpEntConfig.from_pretrained(tmp_path).compression_rates == [1.0, 0.3]


def test_token_ids_outside_the_vocabulary_are_named(model):
    with pytest.raises(ValueError, match="token id 97 is outside the vocabulary"):
        model(torch.tensor([[5, 97]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 5]]))


def test_empty_input_is_refused(model):
    with pytest.raises(ValueError, match="empty input"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_attention_mask_of_the_wrong_shape_is_named(model):
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\)"):
        model(torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 4))


def test_input_ids_and_embeddings_together_are_refused(model):
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(torch.tensor([[5]]), inputs_embeds=torch.zeros(1, 1, 32))

