"""Bad input gets a clear error that names the problem."""

import re
import warnings

import pytest
import torch

from serpent_hf import SeRpEntConfig

from .conftest import cache_of, selectivity_networks, tiny_config, tiny_model


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
        (dict(layer_norm_epsilon=-1e-5), "layer_norm_epsilon"),
        (dict(layer_norm_epsilon=float("nan")), "layer_norm_epsilon"),
        (dict(delta_bias_init=float("nan")), "delta_bias_init"),
        (dict(delta_bias_init=float("inf")), "delta_bias_init"),
        (dict(time_step_scale=float("nan")), "time_step_scale"),
    ],
)
def test_invalid_config_values_are_named(overrides, named):
    # huggingface_hub's strict dataclasses wrap the ValueError in StrictDataclassClassValidationError.
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


def test_padding_between_real_tokens_is_refused_and_padding_at_either_end_is_not(model):
    """Padding in the middle of a row would be read by the convolution and the compression window (it shifted the
    logits after it by 1e-2): refused with the row and position, in one pass and over a cache's span."""
    ids = torch.randint(3, 97, (2, 8))
    left = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    right = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8])
    with torch.no_grad():
        for mask in (left, right):
            model(ids, attention_mask=mask)
        hole = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 1, 1, 1]])
        with pytest.raises(ValueError, match=r"padding between real tokens \(row 1, position 3\)"):
            model(ids, attention_mask=hole)
        cache = cache_of(model(ids[:, :5], attention_mask=right[:, :5], use_cache=True))
        with pytest.raises(ValueError, match=r"padding between real tokens \(row 0, position 5\)"):
            model(ids[:, 5:], cache=cache, attention_mask=torch.cat([right[:, :5], torch.tensor([[0, 1, 1]] * 2)], 1))


def test_a_new_chunk_mask_starting_with_padding_is_refused_only_in_rows_the_cache_has_started(model):
    """Given the mask of the new chunk alone, padding at its start lies between real tokens in a row whose cache holds
    real tokens (refused, as the whole sequence's mask is), and is left padding in a row that has none yet: that row
    continues exactly as in one pass, and so does every row after a step, a beam reorder or a row selection."""
    ids = torch.randint(3, 97, (2, 12))
    first = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])  # row 0 is all padding so far
    second = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    with torch.no_grad():
        cache = cache_of(model(ids[:, :4], attention_mask=first, use_cache=True))
        assert cache.started.tolist() == [False, True]
        with pytest.raises(ValueError, match=r"row 1, position 0 \(the cache holds real tokens of this row\)"):
            model(ids[:, 4:10], cache=cache, attention_mask=second.flip(0))
        chunked = model(ids[:, 4:10], cache=cache, attention_mask=second).logits
        whole = model(ids[:, :10], attention_mask=torch.cat([first, second], 1)).logits
        torch.testing.assert_close(chunked[0, 2:], whole[0, 6:], rtol=0, atol=1e-5)
        torch.testing.assert_close(chunked[1], whole[1, 4:], rtol=0, atol=1e-5)
        assert cache.started.tolist() == [True, True]
        with pytest.raises(ValueError, match=r"row 0, position 0"):
            model(ids[:, 10:], cache=cache, attention_mask=torch.tensor([[0, 1], [1, 1]]))

        fresh = model.model.empty_cache(2)  # a step takes a real token in every row
        model(ids[:, :1], cache=fresh)
        assert fresh.started.tolist() == [True, True]
        fresh.reorder_cache(torch.tensor([1, 1]))
        fresh.batch_select_indices(torch.tensor([0]))
        assert fresh.started.tolist() == [True]
        with pytest.raises(ValueError, match=r"row 0, position 0"):
            model(ids[:1, 1:3], cache=fresh, attention_mask=torch.tensor([[0, 1]]))


def test_input_ids_and_embeddings_together_are_refused(model):
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(torch.tensor([[5]]), inputs_embeds=torch.zeros(1, 1, 32))



@pytest.mark.parametrize("misspelt, field", [("compresion_rates", "compression_rates"),
                                             ("num_neighbours", "num_neighbors"), ("hiden_size", "hidden_size")])
def test_a_misspelt_config_key_warns_naming_the_closest_field(misspelt, field):
    with pytest.warns(UserWarning, match=f"'{misspelt}' is not a SeRpEntConfig field.*did you mean '{field}'"):
        config = tiny_config(**{misspelt: 7})
    assert getattr(config, misspelt) == 7  # kept, as transformers keeps unknown keys


def test_saved_and_custom_config_keys_load_without_a_warning(tmp_path):
    tiny_config(my_project_tag="x").save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SeRpEntConfig.from_pretrained(tmp_path).my_project_tag == "x"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_embeds_are_named(model, value):
    embeds = torch.zeros(2, 5, 32)
    embeds[1, 3, 7] = value
    with pytest.raises(ValueError, match=r"inputs_embeds holds NaN or Inf .*row 1, position 3"):
        model(inputs_embeds=embeds)


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_a_non_finite_delta_is_named(delta_source):
    """NaN in θ_Δ's weights (a diverged run) makes Δ NaN; the clock cannot place a grid on it."""
    model = tiny_model(delta_source=delta_source)
    with torch.no_grad():
        selectivity_networks(model.model)[-1].bias[-1] = float("nan")  # the last layer's κ = 0.25 branch
    with pytest.raises(ValueError, match=r"Δ is not finite .*rate 0.25"):
        model(torch.tensor([[5, 6, 7, 8]]))


@pytest.mark.parametrize("shape", [(5,), (1, 2, 5)])
def test_input_ids_of_the_wrong_rank_are_named(model, shape):
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, length\), got " + re.escape(repr(shape))):
        model(torch.full(shape, 5))


def test_inputs_embeds_of_the_wrong_shape_are_named(model):
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, length, 32\), got \(2, 5\)"):
        model(inputs_embeds=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"inputs_embeds must have shape \(batch, length, 32\), got \(2, 5, 16\)"):
        model(inputs_embeds=torch.zeros(2, 5, 16))
