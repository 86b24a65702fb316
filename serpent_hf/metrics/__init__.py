"""Evaluation metrics shipped with serpent-hf as `evaluate` modules, loadable by path.

    import evaluate
    from serpent_hf.metrics import TOP_K_ACCURACY
    top_k = evaluate.load(TOP_K_ACCURACY)   # top1_accuracy, top5_accuracy from ranked ids
"""

from pathlib import Path

TOP_K_ACCURACY = str(Path(__file__).resolve().parent / "top_k_accuracy")

__all__ = ["TOP_K_ACCURACY"]
