"""`evaluate` metric module: SPICE (needs Stanford CoreNLP: `python -m dali_hf.metrics install-corenlp FOLDER`), as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("spice")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class Spice(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ("spice",)
