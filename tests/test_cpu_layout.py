"""serpent_hf.optimize_for_cpu: the wide projections' weights stored column-major; the model computes the same."""

import torch

from serpent_hf import SeRpEntForCausalLM, optimize_for_cpu

from .conftest import stepwise_logits, tiny_model


def test_wide_weights_become_column_major_and_the_model_computes_the_same(tmp_path):
    model = tiny_model(seed=4)
    ids = torch.randint(3, 97, (3, 24))
    with torch.no_grad():
        before = model(ids).logits
        optimize_for_cpu(model)
        after = model(ids).logits
        stepped, _ = stepwise_logits(model, ids, prefill=5)
    wide = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features > m.in_features]
    assert wide and all(m.weight.stride() == (1, m.out_features) for m in wide)
    assert model.lm_head.weight is model.model.embeddings.weight  # still tied
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stepped, before, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(SeRpEntForCausalLM.from_pretrained(tmp_path)(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_a_re_laid_model_still_trains():
    model = optimize_for_cpu(tiny_model(seed=5)).train()
    ids = torch.randint(3, 97, (2, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(ids, labels=ids).loss
    first.backward()
    optimizer.step()
    assert model(ids, labels=ids).loss < first
