"""SeRpEntForSequenceClassification: a SeRpEnt encoder, pooling over real tokens, a classifier head.

    one sequence:   u = pool(SeRpEntModel(x))                    logits = W u + b
    two sequences:  u = pool(SeRpEntModel(x)), v = pool(SeRpEntModel(x₂))   (the same encoder)
                    logits = W₂ GELU(W₁ [u, v, u⊙v, u-v] + b₁) + b₂         (LRA Retrieval's dual encoder)
    pool:           mean over the positions with attention_mask = 1 (config.pooling = "mean"),
                    or the last such position ("last")

`config.pair_classification` chooses the head. The loss follows transformers' conventions:
`config.num_labels` and `config.problem_type` (regression, single- or multi-label), inferred
from the labels when unset. Long Range Arena uses a bidirectional config (non-causal
resampling and S4D kernel); a causal one works too, and then "last" pooling sees everything.
"""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .modeling_serpent import SeRpEntModel, SeRpEntPreTrainedModel


class SeRpEntForSequenceClassification(SeRpEntPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = SeRpEntModel(config)
        hidden = config.hidden_size
        if config.pair_classification:
            self.classifier = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.GELU(), nn.Linear(hidden, config.num_labels))
        else:
            self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.model.set_input_embeddings(new_embeddings)

    def pool(self, hidden_states, attention_mask):
        """hidden_states (b, l, d), attention_mask (b, l) or None -> (b, d) over the real positions."""
        batch, length, _ = hidden_states.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, device=hidden_states.device, dtype=torch.bool)
        real = attention_mask.bool()
        if self.config.pooling == "mean":
            weights = real.to(hidden_states.dtype).unsqueeze(-1)
            return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        positions = torch.arange(length, device=hidden_states.device)
        last = torch.where(real, positions, 0).amax(dim=-1)  # right or left padding alike
        return hidden_states[torch.arange(batch, device=hidden_states.device), last]

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_hidden_states=None):
        """One sequence through the encoder -> pooled features (b, d) and the encoder's hidden states."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,  # classification reads whole sequences; there is nothing to continue
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return self.pool(outputs.last_hidden_state, attention_mask), outputs.hidden_states

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        input_ids_2=None,
        attention_mask_2=None,
        inputs_embeds=None,
        inputs_embeds_2=None,
        labels=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        r"""
        input_ids_2, attention_mask_2, inputs_embeds_2: the second sequence of a pair (pair_classification).
        labels: (batch,) class ids, or (batch, num_labels) floats for regression / multi-label.

        hidden_states (when output_hidden_states) are those of the first sequence.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pair = input_ids_2 is not None or inputs_embeds_2 is not None
        if pair != self.config.pair_classification:
            expected = "two sequences (input_ids and input_ids_2)" if self.config.pair_classification else "one sequence"
            given = "two" if pair else "one"
            raise ValueError(
                f"this model classifies {expected} (config.pair_classification={self.config.pair_classification}), "
                f"but {given} were given"
            )
        features, hidden_states = self.encode(input_ids, attention_mask, inputs_embeds, output_hidden_states)
        if pair:
            other, _ = self.encode(input_ids_2, attention_mask_2, inputs_embeds_2)
            features = torch.cat([features, other, features * other, features - other], dim=-1)
        logits = self.classifier(features).float()
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config, **kwargs)
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()


__all__ = ["SeRpEntForSequenceClassification"]
