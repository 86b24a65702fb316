"""The Trainer of the language-model runs: transformers' Trainer plus what selective resampling needs.

* It logs, at every logging step, what each compressed branch did over the steps since the last
  log, per layer and branch: M/L (compressed samples per real token) and the spread of Δ (mean,
  5th and 95th percentile over the real tokens). At init Δ sits near its initial value for every
  token (close to fixed-stride pooling); these numbers show whether θ_Δ learns to tell tokens apart.
* `selectivity_lr_multiplier` scales the learning rate of θ_Δ (every parameter of a `selectivity`
  module) relative to the others', keeping the Trainer's weight-decay grouping and schedule.
"""

from collections import defaultdict

import torch
from transformers import Trainer

PERCENTILES = (0.05, 0.95)


def resampling_statistics(deltas, compressed_lengths, rates, valid=None):
    """Per layer and compressed branch: {name: value} of M/L and Δ's mean, 5th and 95th percentile.

    deltas (layers, b, branches, l) float64; compressed_lengths (layers, b, branches); valid (b, l) bool or None."""
    layers, batch, _, length = deltas.shape
    if valid is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=deltas.device)
    real_tokens = valid.sum().clamp(min=1)
    statistics = {}
    for layer in range(layers):
        for branch, rate in enumerate(rates):
            if rate >= 1.0:
                continue
            values = deltas[layer, :, branch][valid].float()
            low, high = torch.quantile(values, torch.tensor(PERCENTILES, device=values.device)).tolist()
            prefix = f"resampling/layer{layer}_rate{rate:g}"
            statistics[f"{prefix}_M_over_L"] = float(compressed_lengths[layer, :, branch].sum() / real_tokens)
            statistics[f"{prefix}_delta_mean"] = float(values.mean())
            statistics[f"{prefix}_delta_p5"] = low
            statistics[f"{prefix}_delta_p95"] = high
    return statistics


class SeRpEntTrainer(Trainer):
    def __init__(self, *args, selectivity_lr_multiplier=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.selectivity_lr_multiplier = selectivity_lr_multiplier
        self._statistics_sums, self._statistics_steps = defaultdict(float), 0

    def _resamples(self, model):
        rates = getattr(model.config, "compression_rates", [1.0])
        return model.config.model_type == "serpent" and any(rate < 1.0 for rate in rates)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        unwrapped = self.accelerator.unwrap_model(model)
        if not (model.training and self._resamples(unwrapped)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, {**inputs, "output_deltas": True}, True, num_items_in_batch)
        with torch.no_grad():
            mask = inputs.get("attention_mask")
            statistics = resampling_statistics(
                outputs.deltas, outputs.compressed_lengths, unwrapped.config.compression_rates,
                None if mask is None else mask.bool(),
            )
        for key, value in statistics.items():
            self._statistics_sums[key] += value
        self._statistics_steps += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._statistics_steps:  # a training log: add the means since the last one
            logs.update({key: total / self._statistics_steps for key, total in self._statistics_sums.items()})
            self._statistics_sums, self._statistics_steps = defaultdict(float), 0
        super().log(logs, *args, **kwargs)

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.selectivity_lr_multiplier != 1.0:
            names = {id(parameter): name for name, parameter in self.model.named_parameters()}
            for group in list(optimizer.param_groups):
                chosen = [p for p in group["params"] if "selectivity." in names.get(id(p), "")]
                if chosen:
                    group["params"] = [p for p in group["params"] if "selectivity." not in names.get(id(p), "")]
                    optimizer.add_param_group(
                        {**group, "params": chosen, "lr": group["lr"] * self.selectivity_lr_multiplier}
                    )
        return optimizer
