"""Model cards of DALI checkpoints: the Jinja template (`dali_model_card.md`, for
`huggingface_hub.ModelCard.from_template`) and the code that renders it (`card.py`), imported by the trainers (a card
with every final save) and by `dali_hf.hub` (uploads). `eval_results_of` turns an evaluation record into the card's
`model-index` results, as `dali_hf.evaluation` writes them too. Imports huggingface_hub only."""

from .card import (
    TEMPLATE,
    eval_result_files,
    eval_results_of,
    record_stage,
    render_model_card,
    write_model_card,
)

__all__ = ["TEMPLATE", "eval_result_files", "eval_results_of", "record_stage", "render_model_card", "write_model_card"]
