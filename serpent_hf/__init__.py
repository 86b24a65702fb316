"""serpent-hf: SeRpEnt (selective resampling over state space models) as a transformers model.

Importing this package registers the model with transformers' Auto classes, so
`AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and `AutoModelForSequenceClassification` load
SeRpEnt checkpoints by `model_type`.
"""

import importlib.util

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

# The architecture is the repository's modeling/ folder, which goes inside the package on installation.
if importlib.util.find_spec(f"{__name__}.modeling") is None:
    raise ImportError(
        f"serpent_hf was imported from the source folder {__path__[0]}, which lacks serpent_hf.modeling (the "
        "repository's modeling/ folder goes inside the package on installation): install the checkout with "
        "`pip install -e .`, or run from a directory other than the repository root to use the installed package"
    )

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
