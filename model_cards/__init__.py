"""Model card templates (Jinja, rendered by huggingface_hub's `ModelCard.from_template`), installed
as `serpent_hf.model_cards` so that an installed serpent-hf writes its cards without the repository.

    from serpent_hf.model_cards import SERPENT_LM   # the language model's card
"""

from pathlib import Path

SERPENT_LM = Path(__file__).resolve().parent / "serpent_lm.md"

__all__ = ["SERPENT_LM"]
