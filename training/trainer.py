"""The Trainer of the language-model runs: transformers' Trainer plus what selective resampling needs.

* It logs, at every logging step, what each compressed branch did over the steps since the last
  log, per layer and branch: M/L (compressed samples per real token) and the spread of Δ (mean,
  5th and 95th percentile over the real tokens), and the rate term when the config charges one.
  At init Δ sits near its initial value for every token (close to fixed-stride pooling); these
  numbers show whether θ_Δ learns to tell tokens apart.
* Learning-rate multipliers for two groups of parameters, keeping the Trainer's weight-decay
  grouping and schedule: `compressed_branch_lr_multiplier` for the branches with κ < 1 (their SSM
  and resampling weights) and `selectivity_lr_multiplier` for θ_Δ; the model names both groups
  (`resampling_parameters`).

Why compressed branches learn more slowly by default (0.1 in train_lm): at the shared learning
rate, Adam drives a compressed branch's output up by three orders of magnitude within the first
few dozen steps. Its output at position l is the SSM output of the last compressed sample, a
smooth summary of the context whose gradient points the same way step after step, so Adam's
normalised steps pile up; the branch learns a large, nearly constant vector (the unigram
direction), which swamps the residual stream, and the model sits at a unigram-like loss for
hundreds of steps (benchmarks/README.md, "Quality study").
"""

from collections import defaultdict

import torch
from transformers import Trainer

PERCENTILES = (0.05, 0.95)


def resampling_statistics(deltas, compressed_lengths, compressed_branches, valid=None):
    """Per layer and compressed branch: {name: value} of M/L and Δ's mean, 5th and 95th percentile.

    deltas (layers, b, branches, l) float64; compressed_lengths (layers, b, branches); compressed_branches
    {index: κ} (SeRpEntConfig.compressed_branches); valid (b, l) bool or None."""
    layers, batch, _, length = deltas.shape
    if valid is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=deltas.device)
    real_tokens = valid.sum().clamp(min=1)
    statistics = {}
    for layer in range(layers):
        for branch, rate in compressed_branches.items():
            values = deltas[layer, :, branch][valid].float()
            low, high = torch.quantile(values, torch.tensor(PERCENTILES, device=values.device)).tolist()
            prefix = f"resampling/layer{layer}_rate{rate:g}"
            statistics[f"{prefix}_M_over_L"] = float(compressed_lengths[layer, :, branch].sum() / real_tokens)
            statistics[f"{prefix}_delta_mean"] = float(values.mean())
            statistics[f"{prefix}_delta_p5"] = low
            statistics[f"{prefix}_delta_p95"] = high
    return statistics


class SeRpEntTrainer(Trainer):
    def __init__(self, *args, selectivity_lr_multiplier=1.0, compressed_branch_lr_multiplier=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.selectivity_lr_multiplier = selectivity_lr_multiplier
        self.compressed_branch_lr_multiplier = compressed_branch_lr_multiplier
        self._statistics_sums, self._statistics_steps = defaultdict(float), 0

    def _resamples(self, model):
        return bool(getattr(model.config, "compressed_branches", None))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        if not (model.training and self._resamples(unwrapped)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, {**inputs, "output_deltas": True}, True, num_items_in_batch)
        with torch.no_grad():
            mask = inputs.get("attention_mask")
            statistics = resampling_statistics(
                outputs.deltas, outputs.compressed_lengths, unwrapped.config.compressed_branches,
                None if mask is None else mask.bool(),
            )
            if getattr(outputs, "rate_loss", None) is not None:
                statistics["resampling/rate_loss"] = float(outputs.rate_loss)
        for key, value in statistics.items():
            self._statistics_sums[key] += value
        self._statistics_steps += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._statistics_steps:  # a training log: add the means since the last one
            logs.update({key: total / self._statistics_steps for key, total in self._statistics_sums.items()})
            self._statistics_sums, self._statistics_steps = defaultdict(float), 0
        super().log(logs, *args, **kwargs)

    def learning_rate_multipliers(self):
        """{id(parameter): multiplier} of the parameters whose multiplier is not 1.0, as the model groups them
        (none for a model without `resampling_parameters`, such as transformers' Mamba)."""
        groups = getattr(self.model, "resampling_parameters", lambda: {})()
        multipliers = {"selectivity": self.selectivity_lr_multiplier,
                       "compressed_branches": self.compressed_branch_lr_multiplier}
        return {id(parameter): multipliers[group] for group, parameters in groups.items() for parameter in parameters}

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        multipliers = self.learning_rate_multipliers()
        for group in list(optimizer.param_groups):  # split each group by multiplier, before any step
            by_multiplier = defaultdict(list)
            for parameter in group["params"]:
                by_multiplier[multipliers.get(id(parameter), 1.0)].append(parameter)
            group["params"] = by_multiplier.pop(1.0, [])
            for multiplier, parameters in by_multiplier.items():
                optimizer.add_param_group({**group, "params": parameters, "lr": group["lr"] * multiplier})
        return optimizer
