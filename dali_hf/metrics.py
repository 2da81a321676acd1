"""Audio-captioning metrics, computed the way the field computes them: the COCO caption toolkit (pycocoevalcap)
with its PTB tokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D (length penalty, clipped counts) and SPICE;
SPIDEr is the mean of CIDEr-D and SPICE. Corpus-level scores of candidates against multiple references.

METEOR and the tokenizer run on Java (Debian's default JRE). SPICE also needs Stanford CoreNLP 3.6.0, which no
package registry ships: set `DALI_CORENLP_DIR` (or pass `corenlp_dir=`) to a folder holding
`stanford-corenlp-3.6.0.jar` and `stanford-corenlp-3.6.0-models.jar`. Without it, `score(metrics=None)` leaves out
SPICE and SPIDEr, and asking for them is an error that says how to get CoreNLP.
"""

import os
import shutil

__all__ = [
    "ALL_METRICS",
    "SpiceUnavailableError",
    "bleu",
    "caption_metric_base",
    "cider_d",
    "meteor",
    "metric_module_path",
    "rouge_l",
    "score",
    "spice",
    "spice_available",
    "spider",
]

ALL_METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class SpiceUnavailableError(RuntimeError):
    """SPICE (and so SPIDEr) cannot run: Stanford CoreNLP is missing."""


def score(candidates: list[str], references: list[list[str]], metrics=None,
          corenlp_dir: str | None = None) -> dict[str, float]:
    """Corpus scores of `candidates` (one per clip) against `references` (several per clip).

    `metrics`: names from `ALL_METRICS`; None = every metric that can run here (SPICE/SPIDEr only with CoreNLP).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists: one list per clip")
    if not candidates:
        raise ValueError("nothing to score: no candidates")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{index}] must be a non-empty list of strings")
    if metrics is None:
        wanted = [m for m in ALL_METRICS if m not in ("spice", "spider") or spice_available(corenlp_dir)]
    else:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = sorted(set(wanted) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}: choose from {ALL_METRICS}")

    gts, res = _tokenized(candidates, references)
    results: dict[str, float] = {}
    if any(m.startswith("bleu_") for m in wanted):
        from pycocoevalcap.bleu.bleu import Bleu

        values, _ = Bleu(4).compute_score(gts, res, verbose=0)
        results.update({f"bleu_{n}": float(values[n - 1]) for n in range(1, 5)})
    if "meteor" in wanted:
        from pycocoevalcap.meteor.meteor import Meteor

        results["meteor"] = float(Meteor().compute_score(gts, res)[0])
    if "rouge_l" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        results["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider_d" in wanted or "spider" in wanted:
        from pycocoevalcap.cider.cider import Cider

        results["cider_d"] = float(Cider().compute_score(gts, res)[0])
    if "spice" in wanted or "spider" in wanted:
        results["spice"] = _spice(gts, res, corenlp_dir)
    if "spider" in wanted:
        results["spider"] = (results["cider_d"] + results["spice"]) / 2
    return {name: results[name] for name in ALL_METRICS if name in wanted}


def bleu(candidates, references, n: int = 4) -> float:
    """Corpus BLEU-n (n in 1..4)."""
    return score(candidates, references, [f"bleu_{n}"])[f"bleu_{n}"]


def meteor(candidates, references) -> float:
    """METEOR 1.5 (Java)."""
    return score(candidates, references, ["meteor"])["meteor"]


def rouge_l(candidates, references) -> float:
    """ROUGE-L (F-measure, beta 1.2, as in the COCO toolkit)."""
    return score(candidates, references, ["rouge_l"])["rouge_l"]


def cider_d(candidates, references) -> float:
    """CIDEr-D: TF-IDF n-gram cosine with a Gaussian length penalty and clipped counts, x10."""
    return score(candidates, references, ["cider_d"])["cider_d"]


def spice(candidates, references, corenlp_dir: str | None = None) -> float:
    """SPICE (needs Stanford CoreNLP, see the module docstring)."""
    return score(candidates, references, ["spice"], corenlp_dir)["spice"]


def spider(candidates, references, corenlp_dir: str | None = None) -> float:
    """SPIDEr = (CIDEr-D + SPICE) / 2."""
    return score(candidates, references, ["spider"], corenlp_dir)["spider"]


def spice_available(corenlp_dir: str | None = None) -> bool:
    """Whether SPICE can run: CoreNLP is beside pycocoevalcap's SPICE jar, or in `corenlp_dir` /
    `$DALI_CORENLP_DIR`."""
    try:
        _install_corenlp(corenlp_dir)
        return True
    except SpiceUnavailableError:
        return False


def _tokenized(candidates, references):
    """PTB-tokenised {clip index: [caption, ...]} dicts, as pycocoevalcap's scorers take them."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise RuntimeError("the PTB tokenizer and METEOR need Java: install a JRE (Debian: default-jre-headless)")
    gts = {i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": cand}] for i, cand in enumerate(candidates)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    # an empty candidate stays a (scorable) empty caption rather than an error in the scorers
    return gts, {i: [caption[0] if caption and caption[0] else ""] for i, caption in res.items()}


def _spice(gts, res, corenlp_dir) -> float:
    _install_corenlp(corenlp_dir)
    from pycocoevalcap.spice.spice import Spice

    return float(Spice().compute_score(gts, res)[0])


def _install_corenlp(corenlp_dir: str | None) -> None:
    import pycocoevalcap.spice as spice_package

    lib = os.path.join(os.path.dirname(spice_package.__file__), "lib")
    if all(os.path.exists(os.path.join(lib, jar)) for jar in _CORENLP_JARS):
        return
    folder = corenlp_dir or os.environ.get("DALI_CORENLP_DIR")
    if not folder or not all(os.path.isfile(os.path.join(folder, jar)) for jar in _CORENLP_JARS):
        raise SpiceUnavailableError(
            "SPICE (and SPIDEr) need Stanford CoreNLP 3.6.0, which no package registry ships. Download "
            "stanford-corenlp-full-2015-12-09.zip from the Stanford NLP site, unzip it, and point DALI_CORENLP_DIR "
            f"(or corenlp_dir=) at the folder holding {' and '.join(_CORENLP_JARS)}"
            + (f"; {folder} does not hold them" if folder else "")
        )
    os.makedirs(lib, exist_ok=True)
    for jar in _CORENLP_JARS:
        target = os.path.join(lib, jar)
        if not os.path.exists(target):
            os.symlink(os.path.abspath(os.path.join(folder, jar)), target)


def caption_metric_base():
    """The `evaluate.Metric` base of the metric modules in `dali_hf/metric_modules/` (built lazily: evaluate and
    datasets are only imported by those who use them)."""
    import datasets
    import evaluate

    class CaptionMetric(evaluate.Metric):
        """Corpus audio-captioning metric(s) of `dali_hf.metrics.score`; subclasses set `names`."""

        names: tuple[str, ...] = ()

        def _info(self):
            return evaluate.MetricInfo(
                description=f"{', '.join(self.names)} of candidate captions against several references, with the "
                "COCO caption toolkit's PTB tokenisation (dali_hf.metrics).",
                citation="",
                inputs_description="predictions: list of captions; references: one list of captions per prediction",
                features=datasets.Features({"predictions": datasets.Value("string"),
                                            "references": datasets.Sequence(datasets.Value("string"))}),
            )

        def _compute(self, predictions, references, corenlp_dir=None):
            return score(list(predictions), [list(r) for r in references], list(self.names) or None, corenlp_dir)

    return CaptionMetric


def metric_module_path(name: str = "audio_captioning") -> str:
    """Local path of an `evaluate` metric module, for `evaluate.load(path)` (offline): "audio_captioning" (all
    metrics that can run), "bleu", "meteor", "rouge_l", "cider_d", "spice" or "spider"."""
    path = os.path.join(os.path.dirname(__file__), "metric_modules", name)
    if not os.path.isdir(path):
        raise ValueError(f"no metric module {name!r}: choose from {sorted(os.listdir(os.path.dirname(path)))}")
    return path
