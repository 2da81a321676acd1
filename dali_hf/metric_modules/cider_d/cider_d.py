"""`evaluate` metric module: CIDEr-D, as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("cider_d")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class CiderD(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ("cider_d",)
