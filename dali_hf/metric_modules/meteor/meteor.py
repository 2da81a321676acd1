"""`evaluate` metric module: METEOR 1.5, as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("meteor")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class Meteor(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ("meteor",)
