"""A decoding step asked for Δ returns what the forward pass returns for that token: Δ of every layer and branch
and the compressed samples the token emitted (it returned deltas=None before)."""

import pytest
import torch

from serpent_hf.compat import CACHE_NAME

from .conftest import cache_of, tiny_model


@pytest.mark.parametrize("delta_source", ["embedding", "hidden"])
def test_a_one_token_step_returns_the_forward_passes_deltas_and_emissions(delta_source):
    model = tiny_model(delta_source=delta_source)
    ids = torch.randint(3, model.config.vocab_size, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids, output_deltas=True)
        output = model(ids[:, :6], use_cache=True, output_deltas=True)
        emitted = output.compressed_lengths.clone()
        for position in range(6, ids.shape[1]):
            output = model(ids[:, position:position + 1], **{CACHE_NAME: cache_of(output)}, use_cache=True,
                           output_deltas=True)
            assert output.deltas.shape[-1] == 1
            torch.testing.assert_close(output.deltas[..., 0], full.deltas[..., position], rtol=0, atol=1e-12 if
                                       delta_source == "hidden" else 0)
            torch.testing.assert_close(output.logits[:, 0], full.logits[:, position], rtol=0, atol=1e-5)
            assert set(output.compressed_lengths[:, :, 1:].unique().tolist()) <= {0, 1}  # one token emits at most one
            emitted += output.compressed_lengths
    assert torch.equal(emitted, full.compressed_lengths)  # every sample the forward pass made, emitted once
