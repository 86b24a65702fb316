"""The model trains with the HF Trainer and supports gradient checkpointing."""

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

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


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(3, 97, (2, 30))
    gradients, checkpointed = [], []
    for checkpointing in (False, True):
        model = tiny_model(seed=4).train()
        if checkpointing:
            # transformers 5.24 renamed it (the Trainer calls the new name); 5.17 has only the old one.
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            checkpoint = model.model._gradient_checkpointing_func
            model.model._gradient_checkpointing_func = lambda *args: checkpointed.append(1) or checkpoint(*args)
        model(ids, labels=ids).loss.backward()
        gradients.append(selectivity_networks(model.model)[0].weight.grad.clone())
    assert len(checkpointed) == model.config.num_hidden_layers  # every layer ran through the checkpoint
    torch.testing.assert_close(gradients[0], gradients[1])
