"""Decoding compiled through transformers' own generate(compile_config=...): the one-token step traces whole
(no graph break, no host read), a new batch size does not recompile at every call, and the compiled steps
give the eager steps' tokens and logits, which are the forward pass's."""

import pytest
import torch
from transformers import CompileConfig

from tests.conftest import assert_steps_match_forward, cache_of, tiny_config, tiny_model

def compile_config(backend="inductor"):
    config = CompileConfig(fullgraph=True, dynamic=None, mode="default", backend=backend)
    config._compile_all_devices = True  # transformers compiles only on accelerators unless told otherwise
    return config


def prompt(batch, length=9, seed=0):
    """Ids from 1 up: generate() takes every 0 (the pad_token_id `greedy` gives it) for padding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, tiny_config().vocab_size, (batch, length), generator=generator)


def greedy(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0,
                          output_logits=True, return_dict_in_generate=True, **kwargs)


def test_one_token_step_traces_as_one_graph():
    """torch._dynamo.explain over a cached one-token forward: one graph, no break (a host read such as
    int(input_ids.min()) or data-dependent Python control flow would break it)."""
    model = tiny_model()
    torch._dynamo.reset()
    with torch.no_grad():
        cache = cache_of(model(prompt(2), use_cache=True))
        token = torch.tensor([[5], [7]])
        explanation = torch._dynamo.explain(model)(input_ids=token, past_key_values=cache, use_cache=True)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow  # seconds of tracing per batch size
def test_new_batch_sizes_do_not_recompile_every_call():
    """dynamo's count of compiled frames over generate() calls at batch sizes 2, 3, 5, 4: once a size has
    changed, the batch dimension is dynamic and later sizes reuse the graph (the backend here is dynamo's
    eager one: recompiles are decided by dynamo's guards, whatever the backend)."""
    model = tiny_model()
    torch._dynamo.reset()
    if hasattr(model, "_compiled_call"):
        del model._compiled_call
    frames = []
    for batch in (2, 3, 5, 4):
        greedy(model, prompt(batch, seed=batch), compile_config=compile_config("eager"))
        frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert frames[0] > 0, "generate() did not compile the step"
    assert frames[3] == frames[2], f"graphs compiled after each generate(): {frames}"


@pytest.mark.slow  # inductor compiles for tens of seconds on a CPU
def test_compiled_steps_equal_eager_and_the_forward_pass():
    """Inductor-compiled steps through generate(): the same greedy tokens as eager decoding, every step's
    logits within 1e-5 of eager's and (the decoding tolerance) of one forward pass over the sequences."""
    model = tiny_model()
    torch._dynamo.reset()
    ids = prompt(3)
    eager = greedy(model, ids)
    compiled = greedy(model, ids, compile_config=compile_config())
    assert hasattr(model, "_compiled_call"), "generate() did not compile the step"
    assert torch.equal(compiled.sequences, eager.sequences)
    torch.testing.assert_close(torch.stack(compiled.logits), torch.stack(eager.logits), rtol=0, atol=1e-5)
    assert_steps_match_forward(model, compiled, ids.shape[1])
