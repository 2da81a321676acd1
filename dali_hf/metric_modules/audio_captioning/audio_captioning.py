"""`evaluate` metric module: All the audio-captioning metrics that can run here (SPICE/SPIDEr need CoreNLP), as `dali_hf.metrics.score` computes it.

    evaluate.load(dali_hf.metrics.metric_module_path("audio_captioning")).compute(predictions=[...], references=[[...], ...])
"""

from dali_hf.metrics import caption_metric_base


class AudioCaptioning(caption_metric_base()):  # the only class in this module: evaluate takes the first
    names = ()
