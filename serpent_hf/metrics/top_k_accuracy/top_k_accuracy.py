"""Top-k accuracy as an `evaluate` metric: the fraction of positions whose reference token is
among the model's k highest-scoring tokens.

Predictions are the ranked token ids themselves (best first), not logits, so an evaluation
loop only needs to keep k integers per position (for example `logits.topk(5).indices`)
instead of the full (positions, vocabulary) score matrix. One call reports every requested k
that the predictions are wide enough for.

Load it by path (it is shipped inside the serpent-hf package):

    import evaluate
    from serpent_hf.metrics import TOP_K_ACCURACY
    metric = evaluate.load(TOP_K_ACCURACY)
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy: a position counts as correct at k when its reference id is one of the first k
predicted ids. With k = 1 this is the usual accuracy of the arg-max prediction. References equal
to `ignore_index` (default -100, the label of padding and of positions without a target) are left
out of the count.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`, or an int array of shape (n, width)): for each position,
        the predicted ids ranked best first. Every row has the same width.
    references (`list` of `int`, or an int array of shape (n,)): the correct id of each position.
    k (`int` or `list` of `int`, defaults to [1, 5]): the k values to report; each must be at least 1
        and at most the width of the predictions.
    ignore_index (`int`, defaults to -100): references with this value are not counted.

Returns:
    `top{k}_accuracy` (`float`) for each requested k, in [0, 1], and `num_positions` (`int`), the number
    of positions counted.

Examples:
    >>> metric = evaluate.load("serpent_hf/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[3, 1], [0, 2], [5, 4]], references=[3, 2, -100], k=[1, 2])
    {'top1_accuracy': 0.5, 'top2_accuracy': 1.0, 'num_positions': 2}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=(1, 5), ignore_index=-100):
        ks = [k] if isinstance(k, int) else list(k)
        references = np.asarray(references, dtype=np.int64).reshape(-1)
        predictions = _as_matrix(predictions, len(references))
        width = predictions.shape[1]
        for value in ks:
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"top-k accuracy needs every k to be a positive integer, got k={value!r}")
            if value > width:
                raise ValueError(
                    f"top-{value} accuracy needs at least {value} predicted ids per position, but the predictions "
                    f"hold only {width}"
                )
        counted = references != ignore_index
        if not counted.any():
            raise ValueError(f"top-k accuracy has no position to count: every reference equals ignore_index={ignore_index}")
        # hits[i, j]: the j-th ranked prediction of position i is its reference (at most one j per row
        # when the ranked ids are distinct; `cumsum > 0` stays correct even if a row repeats an id).
        hits = predictions[counted] == references[counted, None]
        found_by = np.cumsum(hits, axis=1) > 0
        results = {f"top{value}_accuracy": float(found_by[:, value - 1].mean()) for value in ks}
        results["num_positions"] = int(counted.sum())
        return results


def _as_matrix(predictions, num_rows):
    """Ranked ids as an int64 array (num_rows, width); rows of unequal width are an error."""
    if isinstance(predictions, np.ndarray) and predictions.dtype != object:
        matrix = predictions.astype(np.int64, copy=False)
    else:
        rows = [np.asarray(row, dtype=np.int64).reshape(-1) for row in predictions]
        widths = {len(row) for row in rows}
        if len(widths) > 1:
            raise ValueError(f"top-k accuracy needs the same number of predicted ids per position, got widths {sorted(widths)}")
        matrix = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]  # one id per position: plain (top-1) predictions
    if matrix.ndim != 2 or matrix.shape[0] != num_rows:
        raise ValueError(
            f"top-k accuracy needs predictions of shape (positions, k) matching {num_rows} references, "
            f"got shape {matrix.shape}"
        )
    return matrix
