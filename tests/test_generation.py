"""Token-by-token generation through SeRpEntCache is exact, in every generate() mode (DESIGN.md section 3)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
    pipeline,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from serpent_hf import SeRpEntCache
from serpent_hf.compat import CACHE_NAME

from .conftest import DECODING_TOLERANCE, assert_steps_match_forward, cache_of, stepwise_logits, tiny_model

RATE_SETS = [[1.0], [1.0, 0.5, 0.25], [0.3], [1.0, 0.9, 0.1], [0.5, 0.7]]


@settings(max_examples=25, deadline=None)
@given(
    rates=st.sampled_from(RATE_SETS),
    length=st.integers(1, 40),
    prefill=st.integers(0, 6),  # 0..K+2 for K = 4, and below the conv kernel (4)
    neighbors=st.integers(1, 4),
    batch=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_generation_matches_forward(rates, length, prefill, neighbors, batch, seed):
    model = tiny_model(seed=seed, compression_rates=rates, num_neighbors=neighbors)
    ids = torch.randint(3, 97, (batch, length))
    with torch.no_grad():
        full = model(ids).logits
        stepped, cache = stepwise_logits(model, ids, min(prefill, length))
    assert (stepped - full).abs().max().item() < DECODING_TOLERANCE
    assert cache.num_tokens == length


@settings(max_examples=15, deadline=None)
@given(rates=st.sampled_from(RATE_SETS), cuts=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       seed=st.integers(0, 1000))
def test_cached_multi_token_continuation_matches_forward(rates, cuts, seed):
    """A cached call with several new tokens continues the state (a bug that once dropped it in transformers)."""
    model = tiny_model(seed=seed, compression_rates=rates)
    ids = torch.randint(3, 97, (2, sum(cuts) + 1))
    with torch.no_grad():
        full = model(ids).logits
        cache, pieces, start = None, [], 0
        for cut in cuts + [1]:
            out = model(ids[:, start : start + cut], past_key_values=cache, use_cache=True)
            cache, start = cache_of(out), start + cut
            pieces.append(out.logits)
    assert (torch.cat(pieces, 1) - full).abs().max().item() < 1e-4


def test_clock_after_stepping_is_bit_identical_to_the_parallel_clock():
    model = tiny_model(seed=7)
    ids = torch.randint(3, 97, (2, 50))
    with torch.no_grad():
        parallel = cache_of(model(ids, use_cache=True))
        _, stepped = stepwise_logits(model, ids, prefill=3)
    for layer_p, layer_s in zip(parallel.layer_states, stepped.layer_states):
        for state_p, state_s in zip(layer_p, layer_s):
            if state_p.resampling is not None:
                assert torch.equal(state_p.resampling.clock, state_s.resampling.clock)
                assert torch.equal(state_p.resampling.emitted, state_s.resampling.emitted)


def test_greedy_generate_of_a_left_padded_batch_equals_each_row_alone():
    model = tiny_model(seed=8)
    rows = [torch.randint(3, 97, (n,)) for n in (9, 4, 13)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0, output_logits=True,
                  return_dict_in_generate=True)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **kwargs)
        assert_steps_match_forward(model, batched, width, attention_mask=mask)
        for i, row in enumerate(rows):
            alone = model.generate(row[None], **kwargs)
            assert torch.equal(batched.sequences[i, width:], alone.sequences[0, len(row) :])
            # Each step's logits, not only the token they pick: a row's padding changes nothing it computes.
            torch.testing.assert_close(torch.stack(batched.logits, 1)[i], torch.stack(alone.logits, 1)[0], rtol=0,
                                       atol=DECODING_TOLERANCE)


def test_beam_search_scores_equal_full_forward_log_probabilities():
    model = tiny_model(seed=9)
    prompt = torch.randint(3, 97, (2, 7))
    penalty = 1.5
    with torch.no_grad():
        out = model.generate(
            prompt, num_beams=3, num_return_sequences=3, max_new_tokens=6, do_sample=False, output_scores=True,
            return_dict_in_generate=True, length_penalty=penalty, eos_token_id=None, pad_token_id=0,
        )
        sequences = out.sequences
        log_probs = torch.log_softmax(model(sequences).logits, dim=-1)
    new = sequences[:, prompt.shape[1] :]
    token_log_probs = log_probs[:, prompt.shape[1] - 1 : -1].gather(-1, new.unsqueeze(-1)).squeeze(-1)
    expected = token_log_probs.sum(-1) / new.shape[1] ** penalty
    torch.testing.assert_close(out.sequences_scores, expected, atol=1e-4, rtol=1e-4)
    assert len({tuple(s.tolist()) for s in sequences[:3]}) == 3  # the beams really differ


def test_sampling_modes_run_through_the_cache_and_respect_the_seed():
    model = tiny_model(seed=10)
    prompt = torch.randint(3, 97, (2, 5))
    kwargs = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=10, num_return_sequences=2,
                  eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    out = model.generate(prompt, **kwargs, output_logits=True, return_dict_in_generate=True)
    first = out.sequences
    torch.manual_seed(0)
    second = model.generate(prompt, **kwargs)
    assert first.shape == (4, 15) and torch.equal(first, second)
    assert torch.equal(first[0::2, :5], prompt) and torch.equal(first[1::2, :5], prompt)
    assert_steps_match_forward(model, out, prompt.shape[1])  # each sampled step saw the forward pass's logits


def test_cache_memory_is_constant_in_the_number_of_generated_tokens():
    model = tiny_model(seed=11)
    prompt = torch.randint(3, 97, (2, 6))
    sizes = []
    for new_tokens in (1, 10, 100):
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        assert isinstance(cache_of(out), SeRpEntCache)
        assert cache_of(out).num_tokens == 6 + new_tokens - 1  # the last token is never fed back
        sizes.append(cache_of(out).memory_bytes())
    assert sizes[0] == sizes[1] == sizes[2] > 0


def word_tokenizer():
    """A word-level tokenizer over the tiny vocabulary: token i is the word `w{i}`."""
    vocab = {f"w{i}": i for i in range(97)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")), pad_token="w0", eos_token="w2"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def test_text_generation_pipeline_continues_like_greedy_generate():
    model, tokenizer = tiny_model(seed=15), word_tokenizer()
    # device pinned: on a machine with a GPU the pipeline would otherwise move the model there.
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    text = generator("w5 w9 w11", max_new_tokens=6, do_sample=False, eos_token_id=None)[0]["generated_text"]
    expected = model.generate(tokenizer("w5 w9 w11", return_tensors="pt").input_ids, max_new_tokens=6,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
    # The pipeline glues the continuation to the prompt without a space: compare the words' letters.
    assert text.replace(" ", "") == tokenizer.decode(expected[0]).replace(" ", "")


def test_stopping_criteria_and_streamer():
    model, tokenizer = tiny_model(seed=12), word_tokenizer()

    class StopAfter(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 9, dtype=torch.bool)

    class Recorder(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            self.seen = getattr(self, "seen", "") + text

    streamer = Recorder(tokenizer, skip_prompt=True)
    prompt = tokenizer("w5 w6 w7 w8", return_tensors="pt").input_ids
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, streamer=streamer, eos_token_id=None,
                         stopping_criteria=StoppingCriteriaList([StopAfter()]), pad_token_id=0)
    assert out.shape[1] == 9
    assert streamer.seen.split() == tokenizer.decode(out[0, 4:]).split()


def test_generation_errors_name_the_problem():
    model = tiny_model(seed=13)
    with pytest.raises(ValueError, match="empty input"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([[5, 500]]), max_new_tokens=2)
    other = tiny_model(seed=13, compression_rates=[1.0, 0.5])
    cache = cache_of(other(torch.tensor([[5, 6]]), use_cache=True))
    with pytest.raises(ValueError, match="another model config.*compression_rates"):
        model(torch.tensor([[7]]), past_key_values=cache)
    cache = cache_of(model(torch.tensor([[5, 6]]), use_cache=True))
    with pytest.raises(ValueError, match="holds 1 rows but the input has 2"):
        model(torch.tensor([[7], [8]]), past_key_values=cache)
    other = cache_of(model(torch.tensor([[5, 6]]), use_cache=True))
    with pytest.raises(ValueError, match="not both"):
        model(torch.tensor([[7]]), cache=cache, past_key_values=other)


def test_the_cache_goes_by_the_installed_transformers_name_and_the_old_one_still_works():
    """generate() finds the cache only under its release's name (`cache` from 5.24 on, `past_key_values`
    before): our output field is the one transformers' own CausalLMOutputWithPast has."""
    model = tiny_model(seed=14, compression_rates=[1.0, 0.5])
    assert CACHE_NAME in CausalLMOutputWithPast.__dataclass_fields__
    ids = torch.randint(3, 97, (2, 9))
    out = model(ids[:, :6], use_cache=True)
    assert isinstance(out[CACHE_NAME], SeRpEntCache)
    assert [k for k in out.keys() if isinstance(out[k], SeRpEntCache)] == [CACHE_NAME]
    twin = model(ids[:, :6], use_cache=True)[CACHE_NAME]
    by_new_name = model(ids[:, 6:], cache=out[CACHE_NAME]).logits
    by_old_name = model(ids[:, 6:], past_key_values=twin).logits
    torch.testing.assert_close(by_new_name, by_old_name, rtol=0, atol=0)
    torch.testing.assert_close(by_new_name, model(ids).logits[:, 6:], rtol=0, atol=1e-5)


def test_decoding_advances_the_cache_in_place():
    """A step writes into the cache's own tensors (no new state per token; what a CUDA graph relies on),
    and rows that do not emit keep their compressed-branch SSM state."""
    model = tiny_model(seed=15, compression_rates=[1.0, 0.5, 0.2])
    ids = torch.randint(3, 97, (4, 20))
    with torch.no_grad():
        cache = cache_of(model(ids[:, :3], use_cache=True))
        pointers = [tensor.data_ptr() for tensor in cache.tensors()]
        partial_steps = 0
        for position in range(3, ids.shape[1]):
            branch = cache.layer_states[0][2]  # the rate-0.2 branch of the first layer
            ssm_before, emitted_before = branch.mixer.ssm.clone(), branch.resampling.emitted.clone()
            model(ids[:, position : position + 1], past_key_values=cache)
            emits = branch.resampling.emitted != emitted_before
            changed = (branch.mixer.ssm != ssm_before).flatten(1).any(-1)
            assert torch.equal(changed, emits)
            partial_steps += int(0 < emits.sum() < len(emits))
            assert [tensor.data_ptr() for tensor in cache.tensors()] == pointers
    assert partial_steps > 0  # some rows emitted while others did not


def test_a_model_with_offloaded_weights_generates_as_the_model_in_memory(tmp_path):
    """accelerate's disk offloading keeps weights on the meta device and loads each module's own weights in a
    hook around its forward. Forward passes and decoding steps call every module that holds weights (conv1d,
    the mixers, whose A_log and D a step reads), so both match the model in memory, with and without a cache
    (cached decoding used to read A_log outside any call and could not run)."""
    model = tiny_model(seed=9)
    ids = torch.randint(3, 97, (2, 6))
    model.save_pretrained(tmp_path / "model")
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "20KB"}, offload_folder=str(tmp_path / "offload")
    )
    assert set(offloaded.hf_device_map.values()) == {"disk"}
    with torch.no_grad():
        torch.testing.assert_close(offloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
        stepped, _ = stepwise_logits(offloaded, ids, prefill=2)
        torch.testing.assert_close(stepped, model(ids).logits, rtol=0, atol=1e-4)
    greedy = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(offloaded.generate(ids, max_new_tokens=4, do_sample=False), greedy)
    assert torch.equal(offloaded.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False), greedy)
    assert all(p.is_meta for p in offloaded.parameters())  # still offloaded: nothing was loaded for good
    mixer = offloaded.model.layers[0].branches[0].mixer
    with pytest.raises(RuntimeError, match=r"offloaded .* decoding_step=True"):
        mixer.step(torch.zeros(1, mixer.hidden_size), mixer.empty_state(1, "cpu"))  # bypasses the loading hook


@pytest.mark.parametrize("where", ["block", "mixer of a compressed branch"])
def test_decoding_steps_run_the_hooks_of_blocks_and_mixers(where):
    """A decoding step is a call of each block and mixer, not a method beside it, so a forward hook on one (how
    accelerate places layers on devices, how interpretability tools read activations) runs in the full forward
    and in every decoding step alike: a hook that changes the output moves both to the same logits."""
    model = tiny_model(seed=12)
    block = model.model.layers[1]
    module = block if where == "block" else block.branches[1].mixer
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    calls = []

    def shift(module, args, kwargs, output):
        calls.append(kwargs.get("decoding_step", False))
        return (output[0] + 0.5, *output[1:]) if isinstance(output, tuple) else output + 0.5

    module.register_forward_hook(shift, with_kwargs=True)
    with torch.no_grad():
        full = model(ids).logits
        stepped, _ = stepwise_logits(model, ids, prefill=3)
    assert (full - before).abs().max().item() > 1e-2  # the hook matters
    torch.testing.assert_close(stepped, full, rtol=0, atol=1e-4)
    assert calls.count(True) > 0


GREEDY = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_from_embeddings_equals_generate_from_their_ids(num_beams):
    """generate(inputs_embeds=...) without input_ids returns the new tokens only, as transformers' models do."""
    model = tiny_model(seed=16)
    ids = torch.randint(3, 97, (2, 6))
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        scored = dict(output_logits=True, return_dict_in_generate=True)
        from_ids = model.generate(ids, max_new_tokens=5, num_beams=num_beams, **GREEDY, **scored)
        from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=5, num_beams=num_beams, **GREEDY, **scored)
        with_both = model.generate(ids, inputs_embeds=embeds, max_new_tokens=5, num_beams=num_beams, **GREEDY)
    assert torch.equal(from_embeds.sequences, from_ids.sequences[:, 6:])
    assert torch.equal(with_both, from_ids.sequences)
    torch.testing.assert_close(torch.stack(from_embeds.logits), torch.stack(from_ids.logits), rtol=0,
                               atol=DECODING_TOLERANCE)
    if num_beams == 1:
        assert_steps_match_forward(model, from_ids, ids.shape[1])


def test_generation_from_embeddings_continues_from_its_cache():
    model = tiny_model(seed=17)
    ids = torch.randint(3, 97, (2, 6))
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        whole = model.generate(ids, max_new_tokens=5, **GREEDY)
        first = model.generate(inputs_embeds=embeds, max_new_tokens=2, return_dict_in_generate=True, **GREEDY)
        sequence = torch.cat([ids, first.sequences], dim=1)
        rest = model.generate(sequence, **{CACHE_NAME: cache_of(first)}, max_new_tokens=3, **GREEDY)
    assert torch.equal(rest, whole)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # past_key_values is deprecated from transformers 5.24 on
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_generation_continued_from_a_returned_cache_equals_one_uninterrupted_generation(name):
    """Under either name of the cache argument, on every supported transformers release."""
    model = tiny_model(seed=18)
    ids = torch.randint(3, 97, (2, 6))
    with torch.no_grad():
        whole = model.generate(ids, max_new_tokens=5, **GREEDY)
        first = model.generate(ids, max_new_tokens=2, return_dict_in_generate=True, **GREEDY)
        rest = model.generate(first.sequences, **{name: cache_of(first)}, max_new_tokens=3, output_logits=True,
                              return_dict_in_generate=True, **GREEDY)
        assert torch.equal(rest.sequences, whole)
        assert_steps_match_forward(model, rest, first.sequences.shape[1])  # the cache carried the whole state
        rest = rest.sequences
        first = model.generate(ids, max_new_tokens=2, return_dict_in_generate=True, **GREEDY)
        mask = torch.ones_like(first.sequences)  # transformers' convention: the mask covers the whole sequence
        rest = model.generate(first.sequences, attention_mask=mask, **{name: cache_of(first)}, max_new_tokens=3,
                              **GREEDY)
        assert torch.equal(rest, whole)


def test_generation_from_a_prefilled_cache_needs_a_token_the_cache_has_not_seen():
    """A cache holds no logits: generate() from one that consumed every id has nothing to predict from. It once fed
    the last id a second time (the cache then counted it twice); it must name the problem, and a cache of all but
    the last id must continue exactly."""
    model = tiny_model(seed=19)
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():
        whole = model.generate(ids, max_new_tokens=4, output_logits=True, return_dict_in_generate=True, **GREEDY)
        prefix = model(ids[:, :-1], use_cache=True)[CACHE_NAME]
        rest = model.generate(ids, **{CACHE_NAME: prefix}, max_new_tokens=4, output_logits=True,
                              return_dict_in_generate=True, **GREEDY)
        assert torch.equal(rest.sequences, whole.sequences)
        torch.testing.assert_close(torch.stack(rest.logits), torch.stack(whole.logits), rtol=0, atol=DECODING_TOLERANCE)
        full = model(ids, use_cache=True)[CACHE_NAME]
        with pytest.raises(ValueError, match="cache has consumed 9 tokens and input_ids holds 9"):
            model.generate(ids, **{CACHE_NAME: full}, max_new_tokens=4, **GREEDY)


def test_beam_search_continued_from_a_cache_needs_the_cache_expanded_and_then_equals_beam_search():
    """generate() expands the input to batch × num_beams rows but never a cache it is given (as for any
    transformers model): the error says how to expand it, and the expanded cache continues exactly."""
    model = tiny_model(seed=18)
    ids = torch.randint(3, 97, (2, 6))
    with torch.no_grad():
        first = model.generate(ids, max_new_tokens=2, return_dict_in_generate=True, **GREEDY)
        beams = dict(max_new_tokens=3, num_beams=2, **GREEDY)
        with pytest.raises(ValueError, match=r"holds 2 rows but the input has 4.*batch_repeat_interleave\(2\)"):
            model.generate(first.sequences, **{CACHE_NAME: cache_of(first)}, **beams)
        cache = cache_of(model.generate(ids, max_new_tokens=2, return_dict_in_generate=True, **GREEDY))
        cache.batch_repeat_interleave(2)
        continued = model.generate(first.sequences, **{CACHE_NAME: cache}, **beams)
        assert torch.equal(continued, model.generate(first.sequences, **beams))


def test_prepare_inputs_for_generation_forwards_unknown_model_kwargs():
    """transformers forwards every model kwarg it does not know to forward(); so do we."""
    model = tiny_model(seed=19)
    ids = torch.randint(3, 97, (1, 4))
    marker = object()
    inputs = model.prepare_inputs_for_generation(ids, custom_kwarg=marker, use_cache=True)
    assert inputs["custom_kwarg"] is marker
    assert torch.equal(inputs["input_ids"], ids)
