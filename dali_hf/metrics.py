"""Audio-captioning metrics, computed the way the field computes them: the COCO caption toolkit (pycocoevalcap)
with its PTB tokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D (length penalty, clipped counts) and SPICE;
SPIDEr is the mean of CIDEr-D and SPICE. Corpus-level scores of candidates against multiple references.

The toolkit is the `eval` extra (`pip install 'dali-hf[eval]'`); every metric goes through its PTB tokenizer, and
METEOR and the tokenizer run on Java (Debian's default JRE). `check_scoring_tools()` says what is missing before any
work. BLEU and CIDEr-D are not computed without the toolkit: another tokenizer would give numbers that cannot be
compared with the published ones.

SPICE also needs Stanford CoreNLP 3.6.0, which no package registry ships. Installing it is one explicit step,
`install_corenlp(folder)` or `python -m dali_hf.metrics install-corenlp FOLDER` (FOLDER holds
`stanford-corenlp-3.6.0.jar` and `stanford-corenlp-3.6.0-models.jar`; default `$DALI_CORENLP_DIR`): it links the jars
where pycocoevalcap's SPICE reads them. Until then, `score(metrics=None)` leaves out SPICE and SPIDEr, and asking for
them is an error that says how to install CoreNLP. The checks (`spice_available`, `check_scoring_tools`) change
nothing.
"""

import argparse
import importlib.util
import os
import shutil

__all__ = [
    "ALL_METRICS",
    "ScoringToolsMissingError",
    "SpiceUnavailableError",
    "bleu",
    "caption_metric_base",
    "check_scoring_tools",
    "cider_d",
    "install_corenlp",
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
_TOOLKIT_MODULES = ("pycocoevalcap.tokenizer.ptbtokenizer", "pycocoevalcap.bleu.bleu", "pycocoevalcap.cider.cider",
                    "pycocoevalcap.meteor.meteor", "pycocoevalcap.rouge.rouge")
_GET_CORENLP = ("download stanford-corenlp-full-2015-12-09.zip from the Stanford NLP site, unzip it, and install its "
                "jars with `python -m dali_hf.metrics install-corenlp FOLDER` (or `dali_hf.metrics.install_corenlp("
                "FOLDER)`; FOLDER defaults to $DALI_CORENLP_DIR)")


class ScoringToolsMissingError(RuntimeError):
    """A tool the metrics need is not installed: the COCO caption toolkit (the `eval` extra), Java, or CoreNLP."""


class SpiceUnavailableError(ScoringToolsMissingError):
    """SPICE (and so SPIDEr) cannot run: Stanford CoreNLP is not installed where SPICE reads it."""


def check_scoring_tools() -> None:
    """Raise a `ScoringToolsMissingError` that says what to install when the COCO caption toolkit (pycocoevalcap,
    the `eval` extra) or Java is missing: every metric needs both. Call it before any work (captioning a benchmark
    takes long); it imports the toolkit's scorers and changes nothing."""
    try:
        for module in _TOOLKIT_MODULES:
            importlib.import_module(module)
    except ImportError as error:
        raise ScoringToolsMissingError(
            f"the caption metrics need the COCO caption toolkit (pycocoevalcap), which is not installed ({error}): "
            "install it with `pip install 'dali-hf[eval]'`") from None
    if shutil.which("java") is None:
        raise ScoringToolsMissingError(
            "the caption metrics need Java (the PTB tokenizer and METEOR run on it), and no `java` is on PATH: "
            "install a Java runtime (Debian: apt-get install default-jre-headless)")


def score(candidates: list[str], references: list[list[str]], metrics=None) -> dict[str, float]:
    """Corpus scores of `candidates` (one per clip) against `references` (several per clip).

    `metrics`: names from `ALL_METRICS`; None = every metric that can run here (SPICE/SPIDEr only with CoreNLP
    installed, see `install_corenlp`).
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists: one list per clip")
    if not candidates:
        raise ValueError("nothing to score: no candidates")
    for index, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{index}] must be a non-empty list of strings")
    if metrics is None:
        wanted = [m for m in ALL_METRICS if m not in ("spice", "spider") or spice_available()]
    else:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = sorted(set(wanted) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}: choose from {ALL_METRICS}")
    check_scoring_tools()
    if {"spice", "spider"} & set(wanted):
        _require_spice()

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
        results["spice"] = _spice(gts, res)
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


def spice(candidates, references) -> float:
    """SPICE (needs Stanford CoreNLP, see `install_corenlp`)."""
    return score(candidates, references, ["spice"])["spice"]


def spider(candidates, references) -> float:
    """SPIDEr = (CIDEr-D + SPICE) / 2."""
    return score(candidates, references, ["spider"])["spider"]


def spice_available() -> bool:
    """Whether SPICE can run here: pycocoevalcap is installed and Stanford CoreNLP's jars are where its SPICE reads
    them (`install_corenlp` puts them there). A check: it changes nothing."""
    lib = _spice_lib()
    return lib is not None and all(os.path.isfile(os.path.join(lib, jar)) for jar in _CORENLP_JARS)


def install_corenlp(corenlp_dir: str | None = None) -> str:
    """Install Stanford CoreNLP 3.6.0 for SPICE: link `stanford-corenlp-3.6.0.jar` and
    `stanford-corenlp-3.6.0-models.jar` from `corenlp_dir` (default `$DALI_CORENLP_DIR`) into pycocoevalcap's SPICE
    `lib` folder, the one place SPICE reads them from (its jar's class path). Returns that folder. The only function
    here that changes the installed pycocoevalcap; nothing calls it implicitly."""
    lib = _spice_lib()
    if lib is None:
        raise ScoringToolsMissingError("SPICE is part of the COCO caption toolkit (pycocoevalcap), which is not "
                                       "installed: install it with `pip install 'dali-hf[eval]'` first")
    folder = corenlp_dir or os.environ.get("DALI_CORENLP_DIR")
    if not folder:
        raise SpiceUnavailableError("install_corenlp needs the folder holding CoreNLP's jars: pass it, or set "
                                    "DALI_CORENLP_DIR")
    missing = [jar for jar in _CORENLP_JARS if not os.path.isfile(os.path.join(folder, jar))]
    if missing:
        raise SpiceUnavailableError(f"{folder} does not hold {' and '.join(missing)}: point it at the unzipped "
                                    "stanford-corenlp-full-2015-12-09 folder")
    if not os.access(lib, os.W_OK):
        raise SpiceUnavailableError(f"cannot write to {lib} (pycocoevalcap's SPICE jars): install CoreNLP as the "
                                    "user who installed pycocoevalcap, or into a virtual environment you own")
    for jar in _CORENLP_JARS:
        target = os.path.join(lib, jar)
        if os.path.lexists(target):
            os.remove(target)
        os.symlink(os.path.abspath(os.path.join(folder, jar)), target)
    return lib


def _tokenized(candidates, references):
    """PTB-tokenised {clip index: [caption, ...]} dicts, as pycocoevalcap's scorers take them."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = {i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": cand}] for i, cand in enumerate(candidates)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    # an empty candidate stays a (scorable) empty caption rather than an error in the scorers
    return gts, {i: [caption[0] if caption and caption[0] else ""] for i, caption in res.items()}


def _spice(gts, res) -> float:
    _require_spice()
    from pycocoevalcap.spice.spice import Spice

    return float(Spice().compute_score(gts, res)[0])


def _require_spice() -> None:
    if not spice_available():
        raise SpiceUnavailableError(f"SPICE (and SPIDEr) need Stanford CoreNLP 3.6.0, which no package registry "
                                    f"ships: {_GET_CORENLP}")


def _spice_lib() -> str | None:
    """pycocoevalcap's SPICE `lib` folder (where SPICE's jar looks for CoreNLP), or None without pycocoevalcap.
    Located without importing SPICE's module."""
    spec = importlib.util.find_spec("pycocoevalcap")
    for root in (spec.submodule_search_locations or []) if spec else []:
        lib = os.path.join(root, "spice", "lib")
        if os.path.isfile(os.path.join(root, "spice", "spice.py")):
            return lib
    return None


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

        def _compute(self, predictions, references):
            return score(list(predictions), [list(r) for r in references], list(self.names) or None)

    return CaptionMetric


def metric_module_path(name: str = "audio_captioning") -> str:
    """Local path of an `evaluate` metric module, for `evaluate.load(path)` (offline): "audio_captioning" (all
    metrics that can run), "bleu", "meteor", "rouge_l", "cider_d", "spice" or "spider"."""
    path = os.path.join(os.path.dirname(__file__), "metric_modules", name)
    if not os.path.isdir(path):
        raise ValueError(f"no metric module {name!r}: choose from {sorted(os.listdir(os.path.dirname(path)))}")
    return path


def main(argv: list[str] | None = None) -> None:
    """`python -m dali_hf.metrics install-corenlp FOLDER`: the explicit CoreNLP install step for SPICE."""
    parser = argparse.ArgumentParser(prog="python -m dali_hf.metrics", description=main.__doc__.split(": ", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install-corenlp", help=install_corenlp.__doc__.split(". ")[0])
    install.add_argument("folder", nargs="?", help="the folder holding the two jars (default: $DALI_CORENLP_DIR)")
    args = parser.parse_args(argv)
    try:
        lib = install_corenlp(args.folder)
    except ScoringToolsMissingError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"CoreNLP installed for SPICE: {', '.join(_CORENLP_JARS)} linked into {lib}")


if __name__ == "__main__":
    main()
