"""`dali-hf` command line: each subcommand is a thin wrapper over the library.

Training subcommands take `--model` and `--data` (a `datasets.save_to_disk` folder in the column convention); every
field of the stage's TrainingArguments subclass is a flag too (`--output_dir out --num_train_epochs 20 ...`), or
comes from `--config file.json|yaml`. Progress bars are the Trainer's.
"""

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

TRAINING_STAGES = {
    # subcommand: (trainer class, config class, help)
    "prefix-tune": ("PrefixTuningTrainer", "PrefixTuningConfig",
                    "stage 1a: learn the prefix on (image, sound caption) pairs"),
    "align": ("DistributionAlignmentTrainer", "AlignmentConfig",
              "stage 1b: align the audio encoder to the image tokens (writes token_distributions.png)"),
    "distill": ("AudioVisualDistillationTrainer", "DistillationConfig",
                "stage 2: fine-tune the audio projector on pseudo-captions (--captions)"),
}


def _add_training_stage(subparsers, name: str) -> None:
    help_text = TRAINING_STAGES[name][2]
    parser = subparsers.add_parser(name, help=help_text, description=help_text + ". " + __doc__.split("\n\n")[1])
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id (model + processor)")
    parser.add_argument("--data", required=True, help="training rows: a datasets.save_to_disk folder")
    if name == "align":
        parser.add_argument("--eval-data", help="held-out pairs (evaluation uses uniform OT weights)")
        parser.add_argument("--stream", action="store_true",
                            help="read --data as a stream (workers decode it, each process its own clips, resumable "
                                 "mid-epoch): a save_to_disk folder, a Hub dataset id or a folder of data files")
        parser.add_argument("--shuffle-buffer", type=int, default=1000, help="with --stream: shuffle buffer size")
        parser.add_argument("--num-rows", type=int, help="with --stream: rows per epoch, when the source does not "
                                                         "record it (else set --max_steps)")
    if name == "distill":
        parser.add_argument("--captions", required=True, help="output folder of `dali-hf pseudo-caption`")
    parser.add_argument("--config", help="JSON/YAML file of the stage's TrainingArguments fields")
    parser.set_defaults(func=_run_training_stage)


def _run_training_stage(args, extra: list[str]) -> None:
    import datasets
    from transformers import HfArgumentParser

    from . import recipe, trainers

    trainer_name, config_name, _ = TRAINING_STAGES[args.command]
    config_class = getattr(trainers, config_name)
    config_parser = HfArgumentParser(config_class)
    if args.config:
        read = (config_parser.parse_yaml_file if args.config.endswith((".yaml", ".yml"))
                else config_parser.parse_json_file)
        (config,) = read(args.config)
    else:
        (config,) = config_parser.parse_args_into_dataclasses(extra)
    train = _stream(args, config) if getattr(args, "stream", False) else datasets.load_from_disk(args.data)
    if args.command == "distill":
        train = trainers.attach_captions(train, datasets.load_from_disk(os.path.join(args.captions, "dataset")))
    evaluation = datasets.load_from_disk(args.eval_data) if getattr(args, "eval_data", None) else None
    recipe.run_training_stage(getattr(trainers, trainer_name), config, args.model, train, eval_dataset=evaluation)
    print(f"model written to {config.output_dir}")


def _stream(args, config):
    """--data as a shuffled `datasets.IterableDataset` (the alignment trainer turns it into an AlignmentStream)."""
    import datasets

    from .trainers import AlignmentStream

    if os.path.isfile(os.path.join(args.data, "dataset_info.json")) or os.path.isfile(
            os.path.join(args.data, "dataset_dict.json")):
        rows = datasets.load_from_disk(args.data)
        source = rows.to_iterable_dataset(num_shards=max(1, min(64, len(rows) // 1000)))
        num_rows = args.num_rows or len(rows)
    else:
        source = datasets.load_dataset(args.data, split="train", streaming=True)
        num_rows = args.num_rows
    source = source.shuffle(seed=config.seed, buffer_size=args.shuffle_buffer)
    if num_rows is None:
        return source
    from transformers import AutoProcessor

    return AlignmentStream(source, AutoProcessor.from_pretrained(args.model), seed=config.seed,
                           decode_workers=config.dataloader_num_workers or 4, num_rows=num_rows)


def _add_pseudo_caption(subparsers) -> None:
    parser = subparsers.add_parser("pseudo-caption", help="caption (audio, image) pairs from image + audio + prefix",
                                   description="Resumable: rerun the same command after an interruption.")
    parser.add_argument("--model", required=True, help="aligned LlavaAudio folder (after stages 1a and 1b)")
    parser.add_argument("--data", required=True, help="(audio, image) pairs: a datasets.save_to_disk folder")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--paper-sampling", action="store_true",
                        help="sample at temperature 0.2 like the reference code (default: greedy, reproducible)")
    parser.add_argument("--prompt-preset", choices=["llava", "reference"],
                        help="system texts: none, or the authors' (default: the model's processor's)")
    parser.set_defaults(func=_run_pseudo_caption)


def _run_pseudo_caption(args) -> None:
    import datasets
    from transformers import AutoModel, AutoProcessor

    from .trainers import generate_pseudo_captions

    sampling = dict(do_sample=True, temperature=0.2) if args.paper_sampling else dict(do_sample=False)
    result = generate_pseudo_captions(AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model),
                                      datasets.load_from_disk(args.data), args.output_dir,
                                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                      prompt_preset=args.prompt_preset, **sampling)
    print(f"{len(result)} pseudo-captions in {args.output_dir}")


def _add_caption(subparsers) -> None:
    parser = subparsers.add_parser("caption", help="caption audio or video files with a LlavaAudio model",
                                   description="Writes one json line per file; unreadable files are reported in the "
                                   "output and the summary, and the run goes on.")
    parser.add_argument("inputs", nargs="+", help="files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id")
    parser.add_argument("--mode", default="audio", choices=["audio", "audiovisual"],
                        help="audiovisual uses a frame of each video (--frame)")
    parser.add_argument("--frame", default="middle", help='"middle", "first" or seconds')
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--output", default="captions.jsonl")
    parser.add_argument("--preset", default="greedy", choices=["greedy", "paper"])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt")
    parser.add_argument("--prompt-preset", choices=["llava", "reference"],
                        help="system texts: none, or the authors' (default: the model's processor's)")
    parser.add_argument("--chunk-length-s", type=float, help="window for long audio (default: the encoder's input)")
    parser.add_argument("--stride-length-s", type=float, default=0.0, help="overlap of consecutive windows")
    parser.set_defaults(func=_run_caption)


def _run_caption(args) -> None:
    from transformers import pipeline

    from .captioning import caption_files, find_media

    files = find_media(args.inputs)
    frame = args.frame if args.frame in ("middle", "first") else float(args.frame)
    captioner = pipeline("audio-captioning", model=args.model)
    summary = caption_files(captioner, files, args.output, batch_size=args.batch_size, mode=args.mode, frame=frame,
                            preset=args.preset, max_new_tokens=args.max_new_tokens, prompt=args.prompt,
                            prompt_preset=args.prompt_preset, chunk_length_s=args.chunk_length_s, stride_length_s=args.stride_length_s)
    print(f"{summary['captioned']} of {len(files)} files captioned -> {args.output}")
    for row in summary["failed"]:
        print(f"  failed: {row['file']}: {row['error']}")


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="caption a benchmark and score it (BLEU, METEOR, ROUGE-L, CIDEr-D, "
                                   "SPICE/SPIDEr with CoreNLP)",
                                   description="Writes captions.jsonl, scores.json and model_index.json (for a model "
                                   "card) to --output-dir. Decoding is greedy, so results are reproducible.")
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id")
    parser.add_argument("--data", required=True, help="AudioCaps or Clotho csv, or a datasets.save_to_disk folder")
    parser.add_argument("--format", choices=["audiocaps", "clotho", "hf"], help="default: from the file")
    parser.add_argument("--audio-dir", help="folder of the audio files (csv formats)")
    parser.add_argument("--audio-filename", help='AudioCaps file naming, e.g. "{youtube_id}_{start_time}.wav"')
    parser.add_argument("--mode", default="audio", choices=["audio", "audiovisual"])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--metrics", nargs="+", help="default: every metric that can run here")
    parser.add_argument("--dataset-name", help="name in the model-index block (default: from the format)")
    parser.add_argument("--split", default="test")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> None:
    from .evaluation import evaluate_captioner, read_audiocaps, read_clotho, read_hf_dataset

    kind = args.format or _guess_format(args.data)
    if kind in ("audiocaps", "clotho") and not args.audio_dir:
        raise SystemExit(f"--audio-dir is needed with a {kind} csv")
    if kind == "audiocaps":
        data, missing = read_audiocaps(args.data, args.audio_dir, args.audio_filename)
    elif kind == "clotho":
        data, missing = read_clotho(args.data, args.audio_dir)
    else:
        import datasets

        data, missing = read_hf_dataset(datasets.load_from_disk(args.data))
    name = args.dataset_name or {"audiocaps": "AudioCaps", "clotho": "Clotho"}.get(kind, Path(args.data).name)
    scores = evaluate_captioner(args.model, data, args.output_dir, mode=args.mode, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, metrics=args.metrics, dataset_name=name,
                                split=args.split, model_name=Path(args.model).name, missing=missing)
    print(json.dumps(scores, indent=2))
    if missing:
        print(f"{len(missing)} clips had no audio file (listed in {args.output_dir}/scores.json)")


def _guess_format(path: str) -> str:
    if os.path.isdir(path):
        return "hf"
    with open(path, encoding="utf-8") as handle:
        header = handle.readline()
    if "youtube_id" in header:
        return "audiocaps"
    if "file_name" in header:
        return "clotho"
    raise SystemExit(f"cannot tell the format of {path}: pass --format")


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser("push", help="upload a LlavaAudio folder (weights, config, processor, remote code, "
                                   "pipeline, model card) to the Hub")
    parser.add_argument("folder")
    parser.add_argument("--repo-id", required=True, help="org/name")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", help="branch to upload to (created if needed)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded, and stop")
    parser.add_argument("--eval-results", nargs="*", default=[],
                        help="scores.json files of `dali-hf evaluate` (as NAME=PATH) to put in the model card")
    parser.set_defaults(func=_run_push)


def _run_push(args) -> None:
    from .hub import UploadError, push

    results = {}
    for item in args.eval_results:
        name, _, path = item.partition("=")
        report = json.loads(Path(path).read_text())
        results[name] = {"scores": report["scores"], "split": report.get("split", "test")}
    try:
        files = push(args.folder, args.repo_id, private=args.private, revision=args.revision,
                     create_pr=args.create_pr, dry_run=args.dry_run, eval_results=results or None)
    except UploadError as error:
        raise SystemExit(f"error: {error}") from None
    if args.dry_run:
        print("\n".join(files))
    else:
        print(f"uploaded {len(files)} files to https://huggingface.co/{args.repo_id}")


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="run stages 1a, 1b, pseudo-captioning and 2 from one config",
                                   description="Stages 1a, 1b, 2a, 2b in <output_dir>/<stage>; done stages are "
                                   "skipped, interrupted ones resume.")
    parser.add_argument("--config", required=True, help="JSON or YAML recipe (see dali_hf.recipe.run_recipe)")
    parser.set_defaults(func=_run_train)


def _run_train(args) -> None:
    from .recipe import run_recipe

    if args.config.endswith((".yaml", ".yml")):
        import yaml

        with open(args.config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    else:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    print(f"final captioner: {run_recipe(config)}")


def main(argv: list[str] | None = None) -> None:
    from .convert import add_convert_subcommand

    parser = argparse.ArgumentParser(prog="dali-hf", description="DALI zero-shot audio captioning")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_subcommand(subparsers)
    for name in TRAINING_STAGES:
        _add_training_stage(subparsers, name)
    _add_pseudo_caption(subparsers)
    _add_caption(subparsers)
    _add_evaluate(subparsers)
    _add_push(subparsers)
    _add_train(subparsers)
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command in TRAINING_STAGES:
        args.func(args, extra)
        return
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.func(args)


if __name__ == "__main__":
    main()
