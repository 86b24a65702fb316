"""Language-model evaluation with the Trainer: top-1 / top-5 next-token accuracy and perplexity.

The full logits of an evaluation set do not fit in memory (positions × vocabulary floats), so
`preprocess_logits_for_metrics` reduces each batch to the 5 best token ids per position before
the Trainer gathers it, and the `top_k_accuracy` metric shipped in `serpent_hf/metrics` consumes
those ids. Logits at position l are scored against the label at l + 1, as the loss does.
"""

import math

import evaluate
import numpy as np
import torch

from ..configuration_serpent import SeRpEntConfig
from ..metrics import TOP_K_ACCURACY

TOP_K = 5
# Model outputs that are not logits: the Trainer must not gather them. SeRpEnt's config names its own; the
# Mamba anchors (transformers' MambaForCausalLM) add theirs.
IGNORE_KEYS = [*SeRpEntConfig.keys_to_ignore_at_inference, "cache_params", "attentions"]


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


# Upper ends (1-based, inclusive) of the position buckets of `loss_by_position`: 1-128, 129-512, 513-2048, ...
POSITION_BUCKETS = (128, 512, 2048, 4096, 8192)
CURVE_POINTS = 64


def bucket_names(block_size, buckets=POSITION_BUCKETS):
    """[(name, first, last)] of the buckets that hold at least one predicted position of a block."""
    spans, first = [], 1
    for last in sorted(buckets):
        if first > block_size - 1:
            break
        spans.append((f"{first}-{min(last, block_size - 1)}", first, min(last, block_size - 1)))
        first = last + 1
    if first <= block_size - 1:
        spans.append((f"{first}-{block_size - 1}", first, block_size - 1))
    return spans


@torch.no_grad()
def loss_by_position(model, blocks, buckets=POSITION_BUCKETS, batch_size=1):
    """Held-out next-token loss and top-1 accuracy by position within the block.

    blocks: (n, L) token ids. Position p (1 to L - 1) is the prediction of token p + 1 from the p tokens
    before it, so a long-context gain shows in the late buckets. Returns {"block_size", "blocks",
    "buckets": [{"name", "first", "last", "loss", "top1", "tokens"}], "loss_curve": the mean loss in
    CURVE_POINTS equal spans of positions}."""
    blocks = torch.as_tensor(blocks)
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (number of blocks, block length >= 2), got shape {tuple(blocks.shape)}")
    model.eval()
    losses, hits = [], []
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start:start + batch_size].to(model.device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu())
        hits.append((logits.argmax(-1) == targets).float().cpu())
    loss, hit = torch.cat(losses).double(), torch.cat(hits).double()  # (n, L - 1); column p - 1 is position p
    block_size = blocks.shape[1]
    spans = bucket_names(block_size, buckets)
    curve = torch.tensor_split(loss.mean(0), min(CURVE_POINTS, block_size - 1))
    return {"block_size": block_size, "blocks": len(blocks), "buckets_upper": list(buckets),
            "buckets": [{"name": name, "first": first, "last": last, "loss": float(loss[:, first - 1:last].mean()),
                         "top1": float(hit[:, first - 1:last].mean()), "tokens": int(loss[:, first - 1:last].numel())}
                        for name, first, last in spans],
            "loss_curve": [float(span.mean()) for span in curve],
            "loss_curve_positions": [float(span_positions.float().mean()) for span_positions in
                                     torch.tensor_split(torch.arange(1, block_size), min(CURVE_POINTS, block_size - 1))]}
