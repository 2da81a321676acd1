"""`evaluate` metric module: ROUGE-L, as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("rouge_l")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class RougeL(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ("rouge_l",)
