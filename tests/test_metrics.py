"""The top-k accuracy metric (an `evaluate` module shipped in serpent_hf/metrics) and the
Trainer-side reduction of logits to ranked ids, on cases small enough to check by hand."""

import evaluate
import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from serpent_hf.metrics import TOP_K_ACCURACY
from serpent_hf.training.evaluation import TOP_K, add_perplexity, build_compute_metrics, preprocess_logits_for_metrics


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(TOP_K_ACCURACY, keep_in_memory=True)


def test_metric_loads_by_path_as_an_evaluate_module(metric):
    assert isinstance(metric, evaluate.Metric)
    assert set(metric.features) == {"predictions", "references"}


def test_hand_computed_top_k(metric):
    # Position 0: reference 3 is ranked 1st; position 1: 2 is 2nd; position 2: 1 is 3rd; position 3: 6 is absent.
    predictions = [[3, 1, 4], [0, 2, 5], [5, 4, 1], [7, 8, 9]]
    references = [3, 2, 1, 6]
    result = metric.compute(predictions=predictions, references=references, k=[1, 2, 3])
    assert result == {"top1_accuracy": 0.25, "top2_accuracy": 0.5, "top3_accuracy": 0.75, "num_positions": 4}


def test_ignored_references_are_not_counted(metric):
    predictions = [[3, 1], [0, 2], [5, 4], [9, 8]]
    references = [3, -100, 4, -100]
    result = metric.compute(predictions=predictions, references=references, k=[1, 2])
    assert result == {"top1_accuracy": 0.5, "top2_accuracy": 1.0, "num_positions": 2}


def test_default_k_is_one_and_five_and_numpy_input_works(metric):
    predictions = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
    references = np.array([1, 10, 16])
    result = metric.compute(predictions=predictions, references=references)
    assert result["top1_accuracy"] == pytest.approx(1 / 3)
    assert result["top5_accuracy"] == pytest.approx(2 / 3)


def test_plain_ids_are_top_one_predictions(metric):
    assert metric.compute(predictions=[[4], [2], [7]], references=[4, 1, 7], k=1)["top1_accuracy"] == pytest.approx(2 / 3)


def test_matches_a_direct_count_on_random_scores(metric):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(500, 20, generator=generator)
    references = torch.randint(0, 20, (500,), generator=generator)
    ranked = scores.topk(5, dim=-1).indices
    result = metric.compute(predictions=ranked.numpy(), references=references.numpy())
    rank_of_reference = (scores > scores.gather(1, references[:, None])).sum(1)  # 0 = best
    assert result["top1_accuracy"] == pytest.approx((rank_of_reference < 1).float().mean().item())
    assert result["top5_accuracy"] == pytest.approx((rank_of_reference < 5).float().mean().item())


@pytest.mark.parametrize(
    "predictions, references, kwargs, message",
    [
        ([[1, 2], [3, 4]], [1, 3], {"k": [1, 5]}, "top-5 accuracy needs at least 5"),
        ([[1, 2], [3, 4]], [-100, -100], {"k": 1}, "no position to count"),
        ([[1, 2], [3]], [1, 3], {"k": 1}, "same number of predicted ids"),
        ([[1, 2], [3, 4]], [1, 3], {"k": 0}, "positive integer"),
    ],
)
def test_bad_inputs_are_clear_errors(metric, predictions, references, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=predictions, references=references, **kwargs)


def test_trainer_hooks_score_position_l_against_label_l_plus_one():
    vocab, length = 11, 6
    labels = torch.tensor([[3, 7, 1, 9, 4, 2], [5, 5, 0, 8, 6, 10]])
    logits = torch.zeros(2, length, vocab)
    logits[:, :-1].scatter_(-1, labels[:, 1:, None], 10.0)  # position l predicts labels[l + 1] best
    ranked = preprocess_logits_for_metrics((logits, "other outputs are ignored"), labels)
    assert ranked.shape == (2, length - 1, TOP_K)
    assert torch.equal(ranked[..., 0], labels[:, 1:])
    compute = build_compute_metrics()
    assert compute(EvalPrediction(predictions=ranked.numpy(), label_ids=labels.numpy())) == {
        "top1_accuracy": 1.0, "top5_accuracy": 1.0}

    unshifted = torch.zeros(2, length, vocab).scatter_(-1, labels[..., None], 10.0)  # the classic off-by-one
    ranked = preprocess_logits_for_metrics(unshifted, labels).numpy()
    labels_np = labels.numpy().copy()
    labels_np[0, 3] = -100  # padding label: not counted
    result = compute(EvalPrediction(predictions=ranked, label_ids=labels_np))
    # Only row 1 position 0 -> label 5 = labels[1, 0] happens to be right: 1 hit out of 9 counted positions.
    assert result["top1_accuracy"] == pytest.approx(1 / 9)


def test_perplexity_is_the_exponential_of_the_loss():
    assert add_perplexity({"eval_loss": np.log(42.0)})["eval_perplexity"] == pytest.approx(42.0)
