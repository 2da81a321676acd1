"""`evaluate` metric module: BLEU-1..4, as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("bleu")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class Bleu(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ("bleu_1", "bleu_2", "bleu_3", "bleu_4")
