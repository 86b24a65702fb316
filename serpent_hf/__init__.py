"""serpent-hf: SeRpEnt (selective resampling over state space models) as a transformers model.

Importing this package registers the model with transformers' Auto classes, so
`AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and `AutoModelForSequenceClassification` load
SeRpEnt checkpoints by `model_type`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .cache import SeRpEntCache
from .configuration_serpent import SeRpEntConfig
from .modeling_serpent import (
    SeRpEntCausalLMOutput,
    SeRpEntForCausalLM,
    SeRpEntModel,
    SeRpEntModelOutput,
    SeRpEntPreTrainedModel,
)
from .modeling_serpent_classification import SeRpEntForSequenceClassification

AutoConfig.register(SeRpEntConfig.model_type, SeRpEntConfig, exist_ok=True)
AutoModel.register(SeRpEntConfig, SeRpEntModel, exist_ok=True)
AutoModelForCausalLM.register(SeRpEntConfig, SeRpEntForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SeRpEntConfig, SeRpEntForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "SeRpEntCache",
    "SeRpEntCausalLMOutput",
    "SeRpEntConfig",
    "SeRpEntForCausalLM",
    "SeRpEntForSequenceClassification",
    "SeRpEntModel",
    "SeRpEntModelOutput",
    "SeRpEntPreTrainedModel",
]
