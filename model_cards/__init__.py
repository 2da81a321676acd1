"""Model card templates (Jinja, for `huggingface_hub.ModelCard.from_template`)."""

from pathlib import Path

TEMPLATE = Path(__file__).with_name("dali_model_card.md")

__all__ = ["TEMPLATE"]
