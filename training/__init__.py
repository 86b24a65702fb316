"""Training and evaluation pipelines for SeRpEnt language models (HF Trainer + Accelerate).

Scripts: `train_lm.py` (train, evaluate, write the card, push) and `eval_lm.py` (evaluate any
causal LM checkpoint on the same data with the same metric). The other modules are the pieces
those scripts call, one job each: arguments, data, models, evaluation, plots, model_card, hub.
"""
