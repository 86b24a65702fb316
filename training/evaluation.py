"""Language-model evaluation with the Trainer: top-1 / top-5 next-token accuracy and perplexity.

The full logits of an evaluation set do not fit in memory (positions × vocabulary floats), so
`preprocess_logits_for_metrics` reduces each batch to the 5 best token ids per position before
the Trainer gathers it, and the `top_k_accuracy` metric shipped in `serpent_hf/metrics` consumes
those ids. Logits at position l are scored against the label at l + 1, as the loss does.
"""

import math

import evaluate
import numpy as np

from ..metrics import TOP_K_ACCURACY

TOP_K = 5
# Model outputs that are not logits: the Trainer must not gather them.
IGNORE_KEYS = ["cache", "past_key_values", "cache_params", "hidden_states", "attentions", "deltas", "compressed_lengths"]


def preprocess_logits_for_metrics(logits, labels):
    """(batch, length, vocab) logits -> (batch, length - 1, TOP_K) ranked ids of the next-token predictions."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits[:, :-1].topk(TOP_K, dim=-1).indices


def build_compute_metrics():
    metric = evaluate.load(TOP_K_ACCURACY, keep_in_memory=True)  # no cache files: safe with several processes

    def compute_metrics(eval_prediction):
        ranked, labels = eval_prediction.predictions, eval_prediction.label_ids
        references = np.asarray(labels)[:, 1:].reshape(-1)
        ranked = np.asarray(ranked).reshape(-1, TOP_K)
        results = metric.compute(predictions=ranked, references=references, k=[1, TOP_K])
        return {"top1_accuracy": results["top1_accuracy"], f"top{TOP_K}_accuracy": results[f"top{TOP_K}_accuracy"]}

    return compute_metrics


def add_perplexity(metrics, prefix="eval"):
    """perplexity = exp(mean next-token cross-entropy), added next to the loss."""
    loss = metrics[f"{prefix}_loss"]
    metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return metrics
