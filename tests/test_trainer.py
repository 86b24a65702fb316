"""The model trains with the HF Trainer and supports gradient checkpointing."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from transformers.modeling_layers import GradientCheckpointingLayer

from .conftest import selectivity_networks, tiny_model


def test_one_trainer_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
    model = tiny_model(seed=3).train()
    torch.manual_seed(0)
    ids = torch.randint(3, 97, (4, 48))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=3e-3,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    with torch.no_grad():
        before = model.eval()(ids, labels=ids).loss.item()
    Trainer(model=model.train(), args=args, train_dataset=dataset).train()
    with torch.no_grad():
        after = model.eval()(ids, labels=ids).loss.item()
    assert after < before


def gradients_and_recomputations(model, ids):
    """Every parameter's gradient after one backward pass, and how often each layer's first compressed branch ran
    (a checkpointed layer runs its inside twice: once forward, once recomputed in the backward pass)."""
    runs = []
    for index, layer in enumerate(model.model.layers):
        layer.branches[1].register_forward_hook(lambda module, args, output, index=index: runs.append(index))
    model(ids, labels=ids).loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    return gradients, [runs.count(i) for i in range(len(model.model.layers))]


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_(en|dis)able` is deprecated:FutureWarning")
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_gradient_checkpointing_by_transformers_recomputes_every_layer_and_gives_the_same_gradients(
    use_reentrant, delta_source
):
    """The layers are transformers' GradientCheckpointingLayer, so gradient_checkpointing_enable/disable and their
    options act on them as on any transformers model (θ_Δ's gradient too, whose logits enter the layers as inputs
    in embedding mode, and the rate term's, which leaves them through Δ: a reentrant checkpoint once dropped it)."""
    ids = torch.randint(3, 97, (2, 30))
    # Budget 0: every compressed branch pays the rate term, so θ_Δ's gradient holds a share from it.
    options = dict(seed=4, delta_source=delta_source, rate_loss_coef=1.0, rate_loss_budget=0.0)
    expected, runs = gradients_and_recomputations(tiny_model(**options).train(), ids)
    assert runs == [1, 1]
    model = tiny_model(**options).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(isinstance(layer, GradientCheckpointingLayer) for layer in model.model.layers)
    checkpointed = []
    for layer in model.model.layers:
        assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is use_reentrant
        checkpoint = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, c=checkpoint, **k: checkpointed.append(1) or c(*a, **k)
    gradients, runs = gradients_and_recomputations(model, ids)
    assert len(checkpointed) == model.config.num_hidden_layers and runs == [2, 2]
    assert gradients.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(gradients[name], expected[name], msg=name)
    cache = model.model.empty_cache(2)
    with pytest.raises(ValueError, match="advances the cache in place.*gradient checkpointing"):
        model(ids[:, :1], cache=cache)
    model.gradient_checkpointing_disable()
    model.zero_grad()
    _, runs = gradients_and_recomputations(model, ids)
    assert runs == [1, 1]


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_serpent_trainer_gives_compressed_branches_and_selectivity_their_learning_rates(tmp_path, delta_source):
    from serpent_hf.training.trainer import SeRpEntTrainer

    model = tiny_model(seed=3, delta_source=delta_source).train()
    ids = torch.randint(3, 97, (4, 48))
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
                             weight_decay=0.1, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, lr_scheduler_type="constant")
    trainer = SeRpEntTrainer(model=model, args=args, train_dataset=dataset, selectivity_lr_multiplier=10.0,
                             compressed_branch_lr_multiplier=0.1)
    trainer.train()
    decayed = set(Trainer.get_decay_parameter_names(trainer, model))
    learning_rate = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    decay = {id(p): group["weight_decay"] for group in trainer.optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        expected = 1e-3
        if "selectivity." in name:
            expected = 1e-2
        elif ".branches.1." in name or ".branches.2." in name:  # rates 0.5 and 0.25
            expected = 1e-4
        assert learning_rate[id(parameter)] == pytest.approx(expected), name
        assert decay[id(parameter)] == (0.1 if name in decayed else 0.0), name  # the Trainer's own grouping, kept
    assert len(learning_rate) == len(list(model.parameters()))  # every parameter is trained, once
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    m_over_l = logged["resampling/layer1_rate0.25_M_over_L"]
    assert 0.25 <= m_over_l <= 1.0 and logged["resampling/layer1_rate0.25_delta_p5"] <= m_over_l + 1e-6
