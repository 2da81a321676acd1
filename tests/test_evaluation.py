"""Metrics against pycocoevalcap itself, CIDEr-D edge cases, SPICE without CoreNLP, evaluate modules offline,
benchmark readers, and `dali-hf evaluate` end to end."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from dali_hf.evaluation import read_audiocaps, read_clotho, read_hf_dataset
from dali_hf.metrics import SpiceUnavailableError, metric_module_path, score, spice_available

CANDIDATES = ["a dog barks loudly while cars pass", "rain falls on a tin roof", "a man speaks and a bell rings",
              "birds sing in the morning", "an engine idles"]
REFERENCES = [
    ["a dog is barking", "a dog barks as traffic passes by", "dog barking with cars in the background"],
    ["heavy rain on a metal roof", "rain is falling on a roof", "raindrops hit a tin roof"],
    ["a man talks then a bell rings", "a bell rings while someone speaks"],
    ["birds chirp", "several birds are singing", "birdsong in the early morning"],
    ["a car engine is idling", "an engine runs", "a vehicle idles nearby"],
]


def pycocoevalcap_reference(candidates, references):
    """The toolkit called directly, the way the COCO caption evaluation does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in enumerate(candidates)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {**{f"bleu_{n + 1}": bleu[n] for n in range(4)}, "meteor": Meteor().compute_score(gts, res)[0],
            "rouge_l": Rouge().compute_score(gts, res)[0], "cider_d": Cider().compute_score(gts, res)[0]}


@pytest.mark.slow  # pycocoevalcap's Java METEOR and PTB tokenizer
def test_scores_equal_pycocoevalcap():
    ours = score(CANDIDATES, REFERENCES, ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"])
    reference = pycocoevalcap_reference(CANDIDATES, REFERENCES)
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert abs(ours[name] - value) < 1e-6, name
    assert 0 < ours["cider_d"] < 10 and 0 < ours["meteor"] < 1


@pytest.mark.slow  # pycocoevalcap's Java METEOR and PTB tokenizer
def test_cider_d_edge_cases():
    base = score(CANDIDATES, REFERENCES, ["cider_d"])["cider_d"]
    empty = score(["", *CANDIDATES[1:]], REFERENCES, ["cider_d", "bleu_1", "meteor", "rouge_l"])
    assert empty["cider_d"] < base  # an empty caption scores nothing for its clip, and is no error
    alone = score([""], REFERENCES[:1], ["cider_d"])["cider_d"]
    assert alone == 0.0
    # repeated words: CIDEr-D clips n-gram counts and penalises length, so repetition does not pay
    once = score(["a dog barks", *CANDIDATES[1:]], REFERENCES, ["cider_d"])["cider_d"]
    repeated = score(["a dog barks a dog barks a dog barks", *CANDIDATES[1:]], REFERENCES, ["cider_d"])["cider_d"]
    assert repeated < once


@pytest.mark.slow  # pycocoevalcap's Java METEOR and PTB tokenizer
def test_spice_without_corenlp_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DALI_CORENLP_DIR", raising=False)
    if spice_available():
        pytest.skip("Stanford CoreNLP is installed on this machine")  # the error path cannot be shown then
    with pytest.raises(SpiceUnavailableError, match="install its jars with `python -m dali_hf.metrics install-corenlp"):
        score(CANDIDATES, REFERENCES, ["spider"])
    assert set(score(CANDIDATES, REFERENCES)) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l",
                                                  "cider_d"}


def test_score_input_errors():
    with pytest.raises(ValueError, match="one list per clip"):
        score(CANDIDATES, REFERENCES[:2])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        score(["a"], ["a dog"])
    with pytest.raises(ValueError, match="unknown metrics"):
        score(["a"], [["a"]], ["bleu"])


EVALUATE_SCRIPT = """
import json, sys, evaluate
from dali_hf.metrics import metric_module_path
out = {}
for name in ("cider_d", "bleu", "audio_captioning"):
    module = evaluate.load(metric_module_path(name))
    out[name] = module.compute(predictions=json.loads(sys.argv[1]), references=json.loads(sys.argv[2]))
print(json.dumps(out))
"""


@pytest.mark.slow  # a fresh Python loading every metric module
def test_evaluate_modules_load_from_path_offline(tmp_path):
    # no network at all: offline flags, and a proxy that does not exist for anything that would still try
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", EVALUATE_SCRIPT, json.dumps(CANDIDATES), json.dumps(REFERENCES)],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    expected = score(CANDIDATES, REFERENCES)
    assert abs(loaded["cider_d"]["cider_d"] - expected["cider_d"]) < 1e-9
    assert set(loaded["bleu"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4"}
    assert loaded["audio_captioning"].keys() == expected.keys()
    assert os.path.isdir(metric_module_path("spider"))


def _write_clips(folder, names, seconds=0.5):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        t = np.arange(int(16000 * seconds)) / 16000
        soundfile.write(folder / name, (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)


def test_readers_parse_the_public_formats(tmp_path):
    audio = tmp_path / "audio"
    _write_clips(audio, ["abc_DEF-1_30.wav", "Yxyz123.wav", "clip1.wav"])
    with open(tmp_path / "audiocaps.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for n, (yid, start) in enumerate([("abc_DEF-1", "30"), ("xyz123", "0"), ("missing1", "10")]):
            for k in range(5):
                writer.writerow([100 * n + k, yid, start, f"caption {k} of {yid}"])
    data, missing = read_audiocaps(str(tmp_path / "audiocaps.csv"), str(audio))
    assert data["id"] == ["abc_DEF-1_30", "xyz123_0"]
    assert [len(r) for r in data["references"]] == [5, 5]
    assert data["audio"][0].endswith("abc_DEF-1_30.wav") and data["audio"][1].endswith("Yxyz123.wav")
    assert [m["id"] for m in missing] == ["missing1_10"]

    with open(tmp_path / "clotho.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        writer.writerow(["clip1.wav"] + [f"a sound {k}" for k in range(5)])
        writer.writerow(["gone.wav"] + [f"b sound {k}" for k in range(5)])
    data, missing = read_clotho(str(tmp_path / "clotho.csv"), str(audio))
    assert data["id"] == ["clip1.wav"] and data["references"][0][4] == "a sound 4"
    assert [m["id"] for m in missing] == ["gone.wav"]

    import datasets

    hf = datasets.Dataset.from_list([{"id": "x", "audio": {"array": [0.1] * 800, "sampling_rate": 16000},
                                      "captions": ["one", "two"]}])
    data, missing = read_hf_dataset(hf, caption_columns="captions")
    assert data["references"] == [["one", "two"]] and not missing
    with pytest.raises(ValueError, match="missing column"):
        (tmp_path / "bad.csv").write_text("name,text\na,b\n")
        read_clotho(str(tmp_path / "bad.csv"), str(audio))


@pytest.mark.slow  # end to end: captioning, then every metric
def test_evaluate_cli_end_to_end(tmp_path, llava_parts):
    from dali_hf.cli import main
    from dali_hf.testing import saved_captioner

    saved_captioner(llava_parts, "whisper", tmp_path / "model")
    names = [f"clip{i}.wav" for i in range(10)]
    _write_clips(tmp_path / "audio", names)
    with open(tmp_path / "clotho.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        for name in names:
            writer.writerow([name] + ["a dog barks", "a bell rings", "rain falls", "water flows", "a car engine"])
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "clotho.csv"), "--audio-dir",
            str(tmp_path / "audio"), "--output-dir", str(out), "--max-new-tokens", "4", "--batch-size", "4",
            "--split", "evaluation"]
    main(args)
    captions = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [c["id"] for c in captions] == names and all("caption" in c and len(c["references"]) == 5
                                                        for c in captions)
    report = json.loads((out / "scores.json").read_text())
    assert report["clips_scored"] == 10 and "cider_d" in report["scores"]
    expected = score([c["caption"] for c in captions], [c["references"] for c in captions])
    assert report["scores"] == expected
    index = json.loads((out / "model_index.json").read_text())
    metrics = {m["type"]: m["value"] for m in index[0]["results"][0]["metrics"]}
    assert metrics["cider_d"] == round(100 * expected["cider_d"], 2)
    assert index[0]["results"][0]["dataset"]["name"] == "Clotho"
    # the record scores.json keeps is the one a model card reads (`dali-hf push --eval-results Clotho=scores.json`)
    from dali_hf.model_cards import render_model_card

    card = render_model_card(tmp_path / "model", repo_id="model",
                             eval_results={"Clotho": {"scores": report["scores"], "split": report["split"]}})
    assert card.data.to_dict()["model-index"] == index and index[0]["results"][0]["dataset"]["split"] == "evaluation"
    main([*args, "--output-dir", str(tmp_path / "again")])  # the last --output-dir wins
    again = [json.loads(line) for line in (tmp_path / "again" / "captions.jsonl").read_text().splitlines()]
    assert again == captions  # greedy: reproducible
