"""The whole DALI recipe in the toy world, on a CPU: an image captioner that never heard a sound learns to describe
sounds through distribution alignment alone.

    0. a tiny LLaVA trained from scratch on images only (describe the image; what could it sound like)
    1a. prefix tuning on 16 (image, sound caption) pairs          (PrefixTuningTrainer)
    1b. alignment of a tiny CAV-MAE on unlabelled (audio, image) pairs, one run per objective
                                                                   (DistributionAlignmentTrainer)
    2. pseudo-captions from image + audio + prefix, then distillation into the audio projector
                                                                   (generate_pseudo_captions, AudioVisualDistillationTrainer)
    eval. held-out clips with their sound captions: captioning metrics + precision / recall / F1 of the sources named

Baselines in the same table: `no_audio` (the captioner given only the frame), `silence` (an aligned model given
silence) and `random` (an unaligned audio encoder).
"""

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..metrics import score
from ..modeling.pipeline_audio_captioning import captioning_engine
from .world import AUDIBLE, ToyWorld, sources_named, vocabulary

__all__ = ["ExperimentSize", "FULL", "SMALL", "run_experiment", "run_experiments", "source_scores"]

OBJECTIVES = (("contrastive", "exact"), ("mmd", "exact"), ("ot", "exact"), ("ot", "sinkhorn"),
              ("attentive_ot", "exact"))
SOUND_QUESTION = "what could this scene sound like ?"
IMAGE_QUESTION = "describe this image ."


@dataclass(frozen=True)
class ExperimentSize:
    captioner_scenes: int = 2000
    captioner_steps: int = 1000
    align_pairs: int = 2000
    align_epochs: int = 32  # every objective's loss still falls at 16 (OT -11%, MMD -15% in the last third)
    distill_clips: int = 600
    test_clips: int = 150
    objectives: tuple = OBJECTIVES
    distill: bool = True


FULL = ExperimentSize()
SMALL = ExperimentSize(captioner_scenes=1200, captioner_steps=500, align_pairs=800, align_epochs=8,
                       distill_clips=0, test_clips=60, objectives=(("ot", "exact"),), distill=False)


def run_experiment(out_dir: str, seed: int = 0, size: ExperimentSize = FULL, log=print, workers: int = 1
                   ) -> list[dict]:
    """Run everything into `out_dir`; returns the results rows (also in results.json / results.md).

    The work runs in `workers` single-threaded processes (the captioner and prefix tuning first, then one objective
    per process); the results do not depend on `workers`. `log=print` shows progress as it happens; any other
    callable gets each stage's lines when that stage ends."""
    return run_experiments({seed: out_dir}, size, log, workers)[seed]


def run_experiments(out_dirs: dict[int, str], size: ExperimentSize = FULL, log=print, workers: int = 1
                    ) -> dict[int, list[dict]]:
    """Run one experiment per seed (world and training seed) into its folder, sharing `workers` processes."""
    started = time.perf_counter()
    live = log is print
    with worker_pool(workers) as pool:
        # every seed's shared stages are queued first; a seed's objectives follow as soon as its stages are done
        prepared = {seed: pool.submit(prepare_experiment, str(out), seed, size, live) for seed, out in out_dirs.items()}
        objectives = {}
        for seed, future in prepared.items():
            future.result()
            objectives[seed] = [pool.submit(run_objective, str(out_dirs[seed]), seed, size, objective, solver, live)
                                for objective, solver in size.objectives]
        results = {}
        for seed, futures in objectives.items():
            rows, image_f1, messages = prepared[seed].result()
            for objective_rows, objective_messages in (future.result() for future in futures):
                rows += objective_rows
                messages += objective_messages
            if not live:
                for message in messages:
                    log(message)
            results[seed] = _deduplicate_silence(rows)
            write_results(Path(out_dirs[seed]), results[seed], seed, size, image_f1)
    log(f"[{time.perf_counter() - started:6.1f}s] done: {len(out_dirs)} seed(s), {workers} worker process(es)")
    return results


# ---- processes: one thread each, so the numbers do not depend on the machine or its load ------------------------

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                     "OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}


def single_threaded() -> None:
    """Pin this process (and the libraries it loads later) to one thread. Floating-point sums are split across
    threads, so results depend on the thread count, which defaults to the machine's core count; one thread per
    process also keeps the demo from fighting itself for cores (two threads on a busy 2-core machine ran the
    captioner's training ~8x slower than one)."""
    os.environ.update(SINGLE_THREAD_ENV)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work already started in this process: nothing of ours runs there
        pass


def worker_pool(workers: int):
    """`workers` fresh processes started with the single-thread environment in place before they import anything
    (their BLAS reads it at load); even one worker is a separate process, so the caller's settings never matter."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    saved = {name: os.environ.get(name) for name in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=single_threaded)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _stepper(seed: int, live: bool):
    started, messages = time.perf_counter(), []

    def step(message):
        messages.append(f"[seed {seed} {time.perf_counter() - started:6.1f}s] {message}")
        live and print(messages[-1], flush=True)

    return step, messages


# ---- the shared stages, then one task per objective ------------------------------------------------------------

def prepare_experiment(out_dir: str, seed: int, size: ExperimentSize, live: bool = True):
    """Stage 0 and 1a, the alignment features (saved for the objective tasks) and the rows without alignment;
    returns (rows, image captioner's source F1, log lines)."""
    from .. import (
        CavMaeAudioConfig,
        CavMaeFeatureExtractor,
        LlavaAudioForConditionalGeneration,
        LlavaAudioProcessor,
    )
    from ..testing import tiny_llava, tiny_llava_processor, tiny_tokenizer

    step, messages = _stepper(seed, live)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    world = ToyWorld(seed)

    # 0. the image captioner, trained on images only
    tokenizer, vocab_size = tiny_tokenizer(vocabulary())
    llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"), seed=seed, vision_hidden=64,
                       text_hidden=96)
    llava_processor = tiny_llava_processor(tokenizer)
    step("training the image captioner (images only)")
    image_f1 = train_captioner(llava, llava_processor, world, size, seed)
    step(f"image captioner: sound-source F1 from images alone {image_f1:.2f}")

    audio_config = CavMaeAudioConfig(hidden_size=64, num_hidden_layers=2, num_shared_layers=1, num_attention_heads=4,
                                     intermediate_size=128, num_mel_bins=32, target_length=128)
    processor = LlavaAudioProcessor.from_llava(llava_processor, CavMaeFeatureExtractor(num_mel_bins=32,
                                                                                         target_length=128),
                                               audio_config=audio_config)
    torch.manual_seed(seed)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor)
    base = out / "models" / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)

    # 1a. prefix tuning
    step("stage 1a prefix-tune: 16 (image, sound caption) pairs")
    run_prefix_tuning(base, out / "models" / "1a-prefix-tune", world, seed)

    feature_dataset(processor, world, world.scenes(size.align_pairs, "align")).save_to_disk(out / "align-features")
    evaluate = _evaluator(processor, world, world.scenes(size.test_clips, "test"))
    prefixed = _load(out / "models" / "1a-prefix-tune")
    rows = [evaluate(prefixed, "no_audio", "audiovisual", "aligned", use_audio=False),
            evaluate(prefixed, "random", "audio", "aligned")]
    return rows, image_f1, messages


def run_objective(out_dir: str, seed: int, size: ExperimentSize, objective: str, solver: str, live: bool = True):
    """Stage 1b with one objective, stage 2 from it and their evaluation rows; returns (rows, log lines). Starts from
    the prepared folder and the seed alone, so any process gives the same rows."""
    import datasets
    from transformers import AutoProcessor

    step, messages = _stepper(seed, live)
    out = Path(out_dir)
    torch.manual_seed(seed)
    world = ToyWorld(seed)
    processor = AutoProcessor.from_pretrained(out / "models" / "base")
    align_data = datasets.load_from_disk(str(out / "align-features")).with_format("numpy")
    evaluate = _evaluator(processor, world, world.scenes(size.test_clips, "test"))
    name = objective if objective != "ot" else f"ot_{solver}"
    rows = []

    step(f"stage 1b align: {name}")
    aligned_dir = out / "models" / f"1b-align-{name}"
    run_alignment(out / "models" / "1a-prefix-tune", aligned_dir, align_data, objective, solver, size, seed)
    aligned = _load(aligned_dir)
    for mode in ("audio", "audiovisual"):
        rows.append(evaluate(aligned, name, mode, "aligned"))
    if objective == "attentive_ot" or (objective, solver) == size.objectives[-1]:
        rows.append(evaluate(aligned, "silence", "audio", "aligned", silence=True))
    if size.distill and size.distill_clips:
        step(f"stages 2a pseudo-caption and 2b distill: {name}")
        distilled = run_distillation(aligned_dir, out / "models" / f"2b-distill-{name}", world, size, seed)
        # the distilled audio projector was trained on "<audio> + instruction" without the prefix
        # (DistillationConfig.use_prefix): its audio-only captions use that prompt
        for mode in ("audio", "audiovisual"):
            rows.append(evaluate(distilled, name, mode, "distilled", prefix=mode == "audiovisual"))
    step(f"{name}: " + ", ".join(f"{r['mode']}/{r['stage']} F1 {r['source_f1']:.2f}"
                                 for r in rows if r["objective"] == name))
    return rows, messages


def _load(model_dir: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(model_dir).eval()


# ---- stage 0: the captioner ------------------------------------------------------------------------------------

def train_captioner(llava, llava_processor, world: ToyWorld, size: ExperimentSize, seed: int) -> float:
    """Train the whole tiny LLaVA on the two image instructions; returns its source F1 on held-out images."""
    scenes = world.scenes(size.captioner_scenes, "train", require_sound=False)
    rng = np.random.default_rng(seed)
    tokenizer = llava_processor.tokenizer
    images = [world.image(s) for s in scenes]
    examples = []
    for index, scene in enumerate(scenes):
        for question, answer in ((IMAGE_QUESTION, world.image_caption(scene, rng)),
                                 (SOUND_QUESTION, world.sound_caption([k for k in scene.visible if k.sound], rng))):
            examples.append((index, question, answer))
    optimizer = torch.optim.AdamW(llava.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=size.captioner_steps,
                                                   pct_start=0.05)
    llava.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(size.captioner_steps):
        batch = [examples[i] for i in torch.randint(len(examples), (64,), generator=generator).tolist()]
        inputs = _lm_batch([(images[i], q, a) for i, q, a in batch], llava_processor)
        loss = llava(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llava.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    llava.eval()
    held_out = world.scenes(100, "test")
    text = [_llava_prompt(SOUND_QUESTION, llava_processor)] * len(held_out)
    inputs = llava_processor(text=text, images=[world.image(s) for s in held_out], padding=True,
                             padding_side="left", return_tensors="pt")
    with torch.no_grad():
        generated = llava.generate(**inputs, max_new_tokens=16, do_sample=False)
    captions = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    visible_audible = [{k.name for k in s.visible if k.sound} for s in held_out]
    return source_scores(captions, visible_audible)["source_f1"]


def _llava_prompt(question: str, llava_processor) -> str:
    return f"USER: {llava_processor.image_token}\n{question} ASSISTANT:"


def _lm_batch(rows, llava_processor) -> dict:
    """Right-padded LLaVA inputs labelled on the answer (+ EOS) only, from (image, question, answer) rows, by the
    training collators' labelling (LLaVA's prompt is the image-only case of the captioner's chat template)."""
    from ..modeling import CHAT_TEMPLATE
    from ..trainers.collators import assistant_labelled_batch

    conversations = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": q}]},
                      {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
                     for image, q, answer in rows]
    return assistant_labelled_batch(llava_processor, conversations, chat_template=CHAT_TEMPLATE)


# ---- stages 1a, 1b, 2 with the project's trainers --------------------------------------------------------------

def _quiet_args(output_dir, **overrides) -> dict:
    return dict(output_dir=str(output_dir), report_to=[], save_strategy="no", logging_steps=10, use_cpu=True,
                disable_tqdm=True, dataloader_num_workers=0) | overrides


def run_prefix_tuning(base: Path, output_dir: Path, world: ToyWorld, seed: int) -> None:
    import datasets

    from ..recipe import run_training_stage
    from ..trainers import PrefixTuningConfig, PrefixTuningTrainer

    rng = np.random.default_rng(seed + 7)
    scenes = world.scenes(16, "prefix")
    pairs = datasets.Dataset.from_list([{"id": str(i), "image": world.image(s),
                                         "caption": world.sound_caption(s.audible, rng)}
                                        for i, s in enumerate(scenes)],
                                       features=datasets.Features({"id": datasets.Value("string"),
                                                                   "image": datasets.Image(),
                                                                   "caption": datasets.Value("string")}))
    args = PrefixTuningConfig(**_quiet_args(output_dir, num_train_epochs=40, per_device_train_batch_size=16,
                                            learning_rate=1e-2, seed=seed))
    run_training_stage(PrefixTuningTrainer, args, str(base), pairs, log=lambda *_: None)


def feature_dataset(processor, world: ToyWorld, scenes):
    """(audio, image) pairs with their features computed once (alignment runs many epochs over them), stored as
    fixed-shape arrays so rows load without per-element conversion."""
    import datasets

    audio = processor.feature_extractor([world.clip(s) for s in scenes], sampling_rate=16000,
                                        return_tensors="np")["input_features"].astype(np.float32)
    pixels = processor.image_processor([world.image(s) for s in scenes], return_tensors="np")["pixel_values"]
    features = datasets.Features({
        "id": datasets.Value("string"),
        "input_features": datasets.Array2D(shape=audio.shape[1:], dtype="float32"),
        "pixel_values": datasets.Array3D(shape=pixels.shape[1:], dtype="float32"),
    })
    return datasets.Dataset.from_dict({"id": [str(i) for i in range(len(scenes))], "input_features": audio,
                                       "pixel_values": pixels.astype(np.float32)}, features=features
                                      ).with_format("numpy")


def run_alignment(model_dir: Path, output_dir: Path, data, objective: str, solver: str, size: ExperimentSize,
                  seed: int, overrides: dict | None = None) -> None:
    """Align with the demo's settings; `overrides` replaces any `AlignmentConfig` field (bench/parity_options.py)."""
    from ..recipe import run_training_stage
    from ..trainers import AlignmentConfig, DistributionAlignmentTrainer

    # The scorers' optimum is beta_j ~ exp(-v_j / lambda) (v: the OT dual potentials, the gradient of the cost in the
    # weights), so lambda must be of the order of the potentials' spread, here ~10^2 (image-token potentials: silent
    # objects ~ +100, background ~ -100 around their mean). The paper's 500 -> 100 keep the marginals informative
    # (silent objects 0.55x uniform mass, audible ones 0.92x); 5 -> 1 sent every object token, audible or not, to the
    # 0.5x floor of the uniform mix and the mass to the background, which the encoder then learnt to imitate.
    args = AlignmentConfig(**_quiet_args(output_dir, objective=objective, solver=solver,
                                         num_train_epochs=size.align_epochs, per_device_train_batch_size=64,
                                         learning_rate=1e-3, lambda_values=[500.0, 400.0, 300.0, 200.0],
                                         lambda_final=100.0,
                                         scorer_num_heads=4, scorer_learning_rate=1e-3, seed=seed,
                                         lr_scheduler_type="constant") | (overrides or {}))
    run_training_stage(DistributionAlignmentTrainer, args, str(model_dir), data, log=lambda *_: None)


def run_distillation(aligned_dir: Path, output_dir: Path, world: ToyWorld, size: ExperimentSize, seed: int):
    import datasets
    from transformers import AutoProcessor

    from ..recipe import run_training_stage
    from ..trainers import (
        AudioVisualDistillationTrainer,
        DistillationConfig,
        attach_captions,
        generate_pseudo_captions,
    )

    scenes = world.scenes(size.distill_clips, "align")  # unlabelled clips: the alignment pool
    pairs = datasets.Dataset.from_list(
        [{"id": str(i), "audio": {"array": world.clip(s), "sampling_rate": 16000}, "image": world.image(s)}
         for i, s in enumerate(scenes)],
        features=datasets.Features({"id": datasets.Value("string"),
                                    "audio": {"array": datasets.List(datasets.Value("float32")),
                                              "sampling_rate": datasets.Value("int32")},
                                    "image": datasets.Image()}))
    model = _load(aligned_dir)
    processor = AutoProcessor.from_pretrained(aligned_dir)
    captions = generate_pseudo_captions(model, processor, pairs, str(output_dir / "pseudo-captions"), batch_size=64,
                                        max_new_tokens=16)
    args = DistillationConfig(**_quiet_args(output_dir, per_device_train_batch_size=32, learning_rate=1e-3,
                                            num_train_epochs=2, seed=seed))
    run_training_stage(AudioVisualDistillationTrainer, args, str(aligned_dir), attach_captions(pairs, captions),
                       log=lambda *_: None)
    return _load(output_dir)


# ---- evaluation ------------------------------------------------------------------------------------------------

def source_scores(captions: list[str], truth: list[set[str]]) -> dict[str, float]:
    """Micro precision / recall / F1 of the sound sources named in `captions` against the true sets."""
    hits = named = actual = 0
    for caption, sources in zip(captions, truth, strict=True):
        found = sources_named(caption)
        hits, named, actual = hits + len(found & sources), named + len(found), actual + len(sources)
    precision, recall = hits / max(named, 1), hits / max(actual, 1)
    return {"source_precision": precision, "source_recall": recall,
            "source_f1": 2 * precision * recall / max(precision + recall, 1e-12)}


def _evaluator(processor, world: ToyWorld, scenes):
    rng = np.random.default_rng(12345)
    references = [[world.sound_caption(s.audible, rng) for _ in range(5)] for s in scenes]
    truth = [{k.name for k in s.audible} for s in scenes]
    clips = [world.clip(s) for s in scenes]
    images = [world.image(s) for s in scenes]
    examples = {}

    def evaluate(model, objective, mode, stage, use_audio=True, silence=False, prefix=True) -> dict:
        captioner = captioning_engine(model, processor)
        # the model's own caption of every clip (no silence check), in batches of 50
        settings = dict(batch_size=50, max_new_tokens=16, silence_threshold_db=None, prefix=prefix)
        if use_audio:
            audio = [np.zeros(16000, np.float32) for _ in clips] if silence else clips
            results = captioner(audio, images=images if mode == "audiovisual" else None, mode=mode,
                                sampling_rate=16000, **settings)
        else:
            results = captioner(images=images, mode="image", **settings)
        captions = [result["caption"] for (result,) in results]
        row = {"objective": objective, "mode": mode, "stage": stage,
               **score([c or "silence" for c in captions], references), **source_scores(captions, truth)}
        examples[(objective, mode, stage)] = [{"caption": c, "references": r[:2], "heard": sorted(t)}
                                              for c, r, t in zip(captions[:4], references[:4], truth[:4], strict=True)]
        row["examples"] = examples[(objective, mode, stage)]
        return row

    return evaluate


def _deduplicate_silence(rows):
    silence = [r for r in rows if r["objective"] == "silence"]
    return [r for r in rows if r["objective"] != "silence"] + silence[-1:]


def write_results(out: Path, rows: list[dict], seed: int, size: ExperimentSize, image_f1: float):
    chance = _chance_f1()
    table = [{k: v for k, v in r.items() if k != "examples"} for r in rows]
    (out / "results.json").write_text(json.dumps(table, indent=2))
    (out / "examples.json").write_text(json.dumps({f"{r['objective']}/{r['mode']}/{r['stage']}": r["examples"]
                                                   for r in rows}, indent=2))
    columns = ["source_f1", "source_precision", "source_recall", "bleu_4", "meteor", "rouge_l", "cider_d"]
    lines = [f"Toy world, seed {seed}, {size.align_pairs} alignment pairs x {size.align_epochs} epochs, "
             f"{size.test_clips} held-out clips. Image captioner's source F1 "
             f"from images alone: {image_f1:.2f}; a caption naming one random sound source scores F1 ~{chance:.2f}.",
             "", "| objective | mode | stage | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for r in table:
        lines.append(f"| {r['objective']} | {r['mode']} | {r['stage']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in columns) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    os.environ.get("DEMO_QUIET") or print("\n".join(lines))


def _chance_f1() -> float:
    """F1 of naming one uniformly random audible kind per clip, when a clip has about 1.5 sources."""
    p = 1.5 / len(AUDIBLE)
    r = p / 1.5
    return 2 * p * r / (p + r)
