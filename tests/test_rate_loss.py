"""The rate term (config.rate_loss_coef, modeling/rate_loss.py): what it charges, where it is added, what it teaches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import TrainingArguments, default_data_collator

from serpent_hf import SeRpEntConfig, SeRpEntForCausalLM
from serpent_hf.modeling import SelectivityNetwork, rate_loss
from serpent_hf.training.trainer import SeRpEntTrainer

from .conftest import cache_of, tiny_config


def model_with(delta_source, bias, coef=1.0):
    """A tiny model whose every θ_Δ network (the embedding one, or each branch's in hidden mode) gives the logit
    `bias` to every element."""
    torch.manual_seed(0)
    model = SeRpEntForCausalLM(tiny_config(delta_source=delta_source, rate_loss_coef=coef))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SelectivityNetwork):
                module.weight.zero_()
                module.bias.fill_(bias)
    return model


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_rate_term_is_zero_at_the_nominal_rate_and_one_when_every_element_is_kept(delta_source):
    ids = torch.randint(3, 97, (2, 50))
    at_rate = model_with(delta_source, bias=-40.0)  # sigmoid -> 0: Δ = κ, the branch compresses all it may
    keeps_all = model_with(delta_source, bias=40.0)  # sigmoid -> 1: Δ = 1, one sample per element
    assert abs(float(at_rate(input_ids=ids, labels=ids).rate_loss.detach())) < 1e-4
    assert float(keeps_all(input_ids=ids, labels=ids).rate_loss.detach()) == pytest.approx(1.0, abs=1e-4)
    # In between, the term is each branch's excess (M/L - κ) / (1 - κ) beyond the budget b, rescaled by 1 / (1 - b)
    # and averaged: with θ_Δ's logit 0, Δ = (1 + κ) / 2 for every element of every branch, so the excess is 1/2
    # whatever the rates.
    halfway = model_with(delta_source, bias=0.0)
    budget = halfway.config.rate_loss_budget
    assert budget > 0
    expected = (0.5 - budget) / (1 - budget)
    assert float(halfway(input_ids=ids, labels=ids).rate_loss.detach()) == pytest.approx(expected, abs=1e-4)


def test_a_branch_within_its_budget_pays_nothing_and_is_pushed_nowhere():
    """κ is Δ's floor: a term that charged every Δ above it would drive all of them there. Below the budget the
    term is 0 and gives θ_Δ no gradient; the same model with budget 0 is charged and pushed."""
    ids = torch.randint(3, 97, (2, 50))
    model = model_with("embedding", bias=-3.0)  # sigmoid(-3) = 0.047: an excess of 0.047 < the budget of 0.1
    assert model.config.rate_loss_budget == pytest.approx(0.1)
    within = model(input_ids=ids, labels=ids)
    assert float(within.rate_loss.detach()) == 0.0
    (gradient,) = torch.autograd.grad(within.rate_loss, model.model.selectivity.bias, allow_unused=True,
                                      materialize_grads=True)
    assert float(gradient.abs().max()) == 0.0
    model.config.rate_loss_budget = 0.0
    charged = model(input_ids=ids, labels=ids).rate_loss
    assert float(charged.detach()) == pytest.approx(torch.sigmoid(torch.tensor(-3.0)).item(), rel=1e-3)
    (gradient,) = torch.autograd.grad(charged, model.model.selectivity.bias)
    assert float(gradient.abs().max()) > 0


def test_rate_term_counts_real_elements_only():
    """Left padding (mask 0) moves no clock and must not dilute the average: the term of a padded row equals the
    row's own."""
    model = model_with("embedding", bias=0.5)
    with torch.no_grad():
        model.model.selectivity.weight.normal_(0, 3.0)  # Δ differs from token to token
    ids = torch.randint(3, 97, (1, 40))
    alone = model(input_ids=ids, labels=ids).rate_loss
    padded_ids = torch.cat([torch.zeros(1, 24, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 24, dtype=torch.long), torch.ones(1, 40, dtype=torch.long)], dim=1)
    padded = model(input_ids=padded_ids, attention_mask=mask, labels=padded_ids.masked_fill(mask == 0, -100)).rate_loss
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    # Continued from a cache, with the mask of the whole sequence (b, past + length): the term of the new chunk.
    with torch.no_grad():
        cache = cache_of(model(input_ids=padded_ids[:, :30], attention_mask=mask[:, :30], use_cache=True))
    chunk = padded_ids[:, 30:]
    continued = model(input_ids=chunk, attention_mask=mask, cache=cache, labels=chunk).rate_loss
    expected = rate_loss(model(input_ids=padded_ids, attention_mask=mask, output_deltas=True).deltas[..., 30:],
                         model.config.compressed_branches, None, model.config.rate_loss_budget)
    torch.testing.assert_close(continued, expected, rtol=1e-5, atol=1e-6)


def test_loss_is_cross_entropy_plus_coefficient_times_rate_term_and_outputs_stay_as_asked():
    model = model_with("embedding", bias=0.7, coef=0.25)
    ids = torch.randint(3, 97, (2, 30))
    charged = model(input_ids=ids, labels=ids)
    model.config.rate_loss_coef = 0.0
    plain = model(input_ids=ids, labels=ids)
    assert plain.rate_loss is None
    torch.testing.assert_close(charged.loss, plain.loss + 0.25 * charged.rate_loss)
    assert charged.deltas is None  # computed for the term, returned only when output_deltas asks
    model.config.rate_loss_coef = 0.25
    assert model(input_ids=ids).rate_loss is None  # no labels: inference charges nothing
    # Evaluation reports the term but does not add it: its loss, and the perplexity read from it, are the text's.
    evaluated = model.eval()(input_ids=ids, labels=ids)
    torch.testing.assert_close(evaluated.rate_loss, charged.rate_loss)
    torch.testing.assert_close(evaluated.loss, plain.loss)
    text_loss = F.cross_entropy(evaluated.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(evaluated.loss, text_loss)


def test_rate_term_teaches_the_branches_to_compress_with_the_trainer(tmp_path):
    """From θ_Δ's bias at +2 (every branch keeps most elements), the Trainer with the rate term brings the branches
    down to their budgets; without it nothing asks for compression and they keep most elements. It logs the term."""
    ids = torch.randint(3, 97, (64, 48))
    dataset = [{"input_ids": row, "labels": row} for row in ids]

    def train(coef):
        model = model_with("embedding", bias=2.0, coef=coef)
        with torch.no_grad():
            model.model.selectivity.weight.normal_(0, 0.5)
            start = rate_loss(model(input_ids=ids, output_deltas=True).deltas, model.config.compressed_branches)  # excess
        args = TrainingArguments(output_dir=str(tmp_path / f"coef{coef}"), max_steps=30, per_device_train_batch_size=8,
                                 learning_rate=3e-2, logging_steps=10, save_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True)
        trainer = SeRpEntTrainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
        trainer.train()
        with torch.no_grad():
            end = rate_loss(model(input_ids=ids, output_deltas=True).deltas, model.config.compressed_branches)
        return float(start), float(end), [entry for entry in trainer.state.log_history if "loss" in entry]

    (charged_start, charged_end, charged_logs), (free_start, free_end, free_logs) = train(1.0), train(0.0)
    assert charged_start == free_start > 0.5  # the same model: its branches keep most of the elements
    assert charged_end < 0.1 + 0.05  # near the budget: the excess the term leaves uncharged
    assert free_end > 0.4
    assert "resampling/rate_loss" in charged_logs[-1] and "resampling/rate_loss" not in free_logs[-1]
    assert charged_logs[-1]["resampling/rate_loss"] < charged_logs[0]["resampling/rate_loss"]


def test_rate_coefficient_is_validated():
    with pytest.raises(Exception, match="rate_loss_coef must be >= 0"):
        SeRpEntConfig(rate_loss_coef=-0.5)
    with pytest.raises(Exception, match="rate_loss_coef = 0.1 needs a compressed branch"):
        SeRpEntConfig(compression_rates=[1.0], rate_loss_coef=0.1)
    with pytest.raises(Exception, match=r"rate_loss_budget must be in \[0, 1\)"):
        SeRpEntConfig(rate_loss_budget=1.0)


def test_evaluation_with_the_rate_term_scores_the_logits(tmp_path):
    """With the rate term on, a plain transformers Trainer (no ignore_keys: it reads the config's) and the package's
    own evaluation both rank the logits, not the scalar rate term; a tuple output holds the loss and then the logits,
    as every transformers causal LM's does."""
    from transformers import Trainer

    from serpent_hf.training.evaluation import IGNORE_KEYS, TOP_K, preprocess_logits_for_metrics

    model = model_with("embedding", bias=0.0).eval()
    ids = torch.randint(3, 97, (4, 24))
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids)
        as_tuple = model(input_ids=ids, labels=ids, return_dict=False)
    assert float(expected.rate_loss) > 0
    torch.testing.assert_close(as_tuple[1], expected.logits)
    ranked = expected.logits[:, :-1].topk(TOP_K, dim=-1).indices
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, data_collator=default_data_collator,
                      preprocess_logits_for_metrics=preprocess_logits_for_metrics)
    dataset = [{"input_ids": row, "labels": row} for row in ids]
    for ignore_keys in (None, IGNORE_KEYS):
        prediction = trainer.predict(dataset, ignore_keys=ignore_keys)
        assert torch.equal(torch.as_tensor(prediction.predictions), ranked)
        assert prediction.metrics["test_loss"] == pytest.approx(float(expected.loss), rel=1e-5)
    # Without a preprocessing step the predictions are the logits alone, not (logits, rate terms): the config tells
    # the Trainer which outputs are not predictions.
    raw = Trainer(model=model, args=args, data_collator=default_data_collator).predict(dataset).predictions
    assert isinstance(raw, np.ndarray)
    torch.testing.assert_close(torch.as_tensor(raw), expected.logits)


def test_gradient_accumulation_charges_the_rate_term_once_per_optimizer_step(tmp_path):
    """The Trainer does not divide a loss that the model normalised by `num_items_in_batch`, so each micro-batch's
    rate term must carry its share of the accumulated batch: one SGD step on 8 rows in one pass and on the same rows
    in two accumulated passes of 4 must leave the same weights."""
    ids = torch.randint(3, 97, (8, 32))
    dataset = [{"input_ids": row, "labels": row} for row in ids]

    def one_step(batch_size, accumulation):
        model = model_with("embedding", bias=2.0, coef=10.0)  # far above the budget: the term dominates θ_Δ's step
        args = TrainingArguments(output_dir=str(tmp_path / f"ga{accumulation}"), max_steps=1, optim="sgd",
                                 learning_rate=0.5, per_device_train_batch_size=batch_size,
                                 gradient_accumulation_steps=accumulation, lr_scheduler_type="constant",
                                 save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
                                 dataloader_drop_last=False, seed=0, data_seed=0)
        trainer = SeRpEntTrainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator)
        trainer.train()
        return model.model.selectivity.bias.detach().clone(), model.lm_head.weight.detach().clone()

    (bias_one, head_one), (bias_two, head_two) = one_step(8, 1), one_step(4, 2)
    assert float((bias_one - 2.0).abs().max()) > 0.05  # the step moved θ_Δ
    torch.testing.assert_close(bias_two, bias_one, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head_two, head_one, rtol=1e-4, atol=1e-5)


def test_the_model_card_names_the_rate_term_when_a_run_used_it():
    from serpent_hf.training.models import describe_architecture

    assert describe_architecture(model_with("embedding", bias=0.0, coef=0.5))["rate_loss_coef"] == 0.5
    assert "rate_loss_coef" not in describe_architecture(model_with("embedding", bias=0.0, coef=0.0))
