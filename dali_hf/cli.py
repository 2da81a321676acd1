"""`dali-hf` command line: each subcommand is a thin wrapper over the library.

Training subcommands take `--model` and `--data` (a `datasets.save_to_disk` folder in the column convention); every
field of the stage's TrainingArguments subclass is a flag too (`--output_dir out --num_train_epochs 20 ...`), or
comes from `--config file.json|yaml`. Progress bars are the Trainer's.

Building the parser imports nothing heavy: `dali-hf --help` and argument errors answer at once, and torch,
transformers and the model classes are imported (and registered with the Auto classes) only to run a command.
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

__all__ = ["main"]

HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter
PRESETS = ("greedy", "paper")  # the decoding presets of pipeline("audio-captioning") (PRESETS there)
METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d", "spice", "spider")
# The subcommands are the stages' names (`dali_hf.trainers.stages.STAGES`, checked by the tests): written out here so
# that `--help` and argument errors answer without importing torch.
TRAINING_STAGES = {
    # subcommand: (trainer class, config class, help)
    "prefix-tune": ("PrefixTuningTrainer", "PrefixTuningConfig",
                    "stage 1a: learn the prefix on (image, sound caption) pairs"),
    "align": ("DistributionAlignmentTrainer", "AlignmentConfig",
              "stage 1b: align the audio encoder's tokens to the image tokens (writes token_distributions.png)"),
    "distill": ("AudioVisualDistillationTrainer", "DistillationConfig",
                "stage 2b: fine-tune the audio projector on the pseudo-captions (--captions)"),
}
PSEUDO_CAPTION_HELP = "stage 2a: caption (audio, image) pairs from image + audio + prefix"


# ---- argument types: invalid values are argparse errors, at parse time --------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def frame_position(text: str):
    """--frame: "middle", "first", or a time in seconds."""
    if text in ("middle", "first"):
        return text
    try:
        return non_negative_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'expected "middle", "first" or seconds (e.g. 2.5), got {text!r}') from None


def silence_threshold(text: str):
    """--silence-threshold-db: a level in dBFS, or "off"."""
    if text.lower() == "off":
        return None
    value = _number(text)
    if not value <= 0:
        raise argparse.ArgumentTypeError(f"a level in dBFS is 0 or less (e.g. -60), got {text}")
    return value


def repo_id(text: str) -> str:
    """--repo-id: "name" or "org/name" as the Hub accepts them."""
    if not re.fullmatch(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}", text) or ".." in text \
            or "--" in text or text.endswith((".git", ".")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hub repo id: use org/name (letters, digits, '-', '_', "
                                         "'.'; no '--' or '..')")
    return text


def eval_result(text: str) -> tuple[str, str]:
    """--eval-results item: NAME=PATH of an existing scores.json."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH (e.g. AudioCaps=eval/scores.json), got {text!r}")
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path} is not a file: pass the scores.json that `dali-hf evaluate` wrote"
                                         + (" (this is a folder)" if os.path.isdir(path) else ""))
    return name, path


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


# ---- training stages: the stage's TrainingArguments fields become flags, parsed once a stage runs -------------

def _add_training_stage(subparsers, name: str) -> None:
    # the full parser (every TrainingArguments field) needs transformers: built when the stage runs, help included
    help_text = TRAINING_STAGES[name][2]
    subparsers.add_parser(name, help=help_text, add_help=False)


def _stage_options(name: str) -> argparse.ArgumentParser:
    """The stage's own options (not its TrainingArguments fields)."""
    parser = argparse.ArgumentParser(prog=f"dali-hf {name}", add_help=False, formatter_class=HELP_FORMAT)
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id (model + processor)")
    parser.add_argument("--data", required=True, help="training rows: a datasets.save_to_disk folder")
    if name == "align":
        parser.add_argument("--eval-data", help="held-out pairs (evaluation uses uniform OT weights)")
        parser.add_argument("--stream", action="store_true",
                            help="read --data as a stream (workers decode it, each process its own clips, resumable "
                                 "mid-epoch): a save_to_disk folder, a Hub dataset id or a folder of data files")
        parser.add_argument("--shuffle-buffer", type=positive_int, default=1000, help="with --stream: shuffle buffer")
        parser.add_argument("--num-rows", type=positive_int, help="with --stream: rows per epoch, when the source "
                                                                  "does not record it (else set --max_steps)")
    if name == "distill":
        parser.add_argument("--captions", required=True, help="output folder of `dali-hf pseudo-caption`")
    parser.add_argument("--config", help="JSON/YAML file of the stage's TrainingArguments fields (then no field "
                                         "flags)")
    return parser


def _run_training_stage(name: str, argv: list[str]) -> None:
    if not {"-h", "--help"} & set(argv):
        _stage_options(name).parse_known_args(argv)  # missing --model / --data: an error before any import
    import datasets
    from transformers import HfArgumentParser

    from . import recipe, trainers

    trainer_name, config_name, help_text = TRAINING_STAGES[name]
    options = _stage_options(name)
    parser = HfArgumentParser(getattr(trainers, config_name), prog=f"dali-hf {name}", parents=[options],
                              description=f"{help_text}. {__doc__.split(chr(10) * 2)[1]}")
    if {"-h", "--help"} & set(argv):
        parser.parse_args(["--help"])
    args, extra = options.parse_known_args(argv)
    if args.config:
        if extra:
            parser.error(f"with --config, set the stage's fields in the file, not as flags: {' '.join(extra)}")
        read = parser.parse_yaml_file if args.config.endswith((".yaml", ".yml")) else parser.parse_json_file
        (config,) = read(args.config)
    else:
        config, args, unused = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
        if unused:
            parser.error(f"unrecognized arguments: {' '.join(unused)}")
    try:
        recipe.checkpoint_to_resume(config)  # a --resume_from_checkpoint that is no checkpoint: said before loading
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    _register()
    train = _stream(args, config) if getattr(args, "stream", False) else datasets.load_from_disk(args.data)
    if name == "distill":
        train = trainers.attach_captions(train, datasets.load_from_disk(os.path.join(args.captions, "dataset")))
    evaluation = datasets.load_from_disk(args.eval_data) if getattr(args, "eval_data", None) else None
    trainer = recipe.run_training_stage(getattr(trainers, trainer_name), config, args.model, train,
                                        eval_dataset=evaluation)
    if trainer.is_world_process_zero():
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


# ---- convert-official: its parser lives beside the conversion (dali_hf.convert), which imports torch ---------

def _add_convert(subparsers) -> None:
    subparsers.add_parser("convert-official", add_help=False,
                          help="convert the DALI authors' released checkpoints into a LlavaAudio model folder")


def _run_convert(argv: list[str]) -> None:
    from .convert import add_convert_subcommand

    parser = argparse.ArgumentParser(prog="dali-hf", formatter_class=HELP_FORMAT)
    add_convert_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert-official", *argv])
    _register()
    args.func(args)


# ---- the other subcommands ---------------------------------------------------------------------------------

def _add_pseudo_caption(subparsers) -> None:
    parser = subparsers.add_parser("pseudo-caption", help=PSEUDO_CAPTION_HELP,
                                   description="Resumable: rerun the same command after an interruption.",
                                   formatter_class=HELP_FORMAT)
    parser.add_argument("--model", required=True, help="aligned LlavaAudio folder (after stages 1a and 1b)")
    parser.add_argument("--data", required=True, help="(audio, image) pairs: a datasets.save_to_disk folder")
    parser.add_argument("--output-dir", required=True, help="folder of the pseudo-captions")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate() call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="longest caption, in tokens")
    parser.add_argument("--preset", default="greedy", choices=PRESETS,
                        help="decoding: greedy (reproducible) or paper (temperature 0.2, as the reference code)")
    parser.add_argument("--paper-sampling", dest="preset", action="store_const", const="paper",
                        help=argparse.SUPPRESS)  # the former name of --preset paper
    parser.add_argument("--prompt-preset", choices=["llava", "reference"],
                        help="system texts: none, or the authors' (default: the model's processor's)")
    parser.set_defaults(func=_run_pseudo_caption)


def _run_pseudo_caption(args) -> None:
    import datasets
    from transformers import AutoModel, AutoProcessor

    from .trainers import generate_pseudo_captions

    sampling = dict(do_sample=True, temperature=0.2) if args.preset == "paper" else dict(do_sample=False)
    result = generate_pseudo_captions(AutoModel.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model),
                                      datasets.load_from_disk(args.data), args.output_dir,
                                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                      prompt_preset=args.prompt_preset, **sampling)
    print(f"{len(result)} pseudo-captions in {args.output_dir}")


def _add_caption(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption", help="caption audio or video files (or images) with a LlavaAudio model", formatter_class=HELP_FORMAT,
        description="Writes one json line per file: {file, caption}, {file, chunks: [{caption, timestamp}, ...]} for "
        "audio longer than the encoder's window, or {file, error}. Unreadable files are reported in the output and "
        "the summary, and the run goes on; the exit status is 1 when no file was captioned.")
    parser.add_argument("inputs", nargs="+", help="files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id")
    parser.add_argument("--mode", default="audio", choices=["audio", "audiovisual", "image"],
                        help="audio: the sound; audiovisual: the sound and a frame of each video (--frame); image: "
                             "image files (or a video frame) alone")
    parser.add_argument("--frame", default="middle", type=frame_position,
                        help='frame of a video for audiovisual / image mode: "middle", "first" or seconds')
    parser.add_argument("--batch-size", type=positive_int, default=1, help="inputs per generate() call")
    parser.add_argument("--output", default="captions.jsonl", help="json lines file to write")
    parser.add_argument("--preset", default="greedy", choices=PRESETS,
                        help="decoding: greedy (reproducible) or paper (temperature 0.2, as the reference code)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest caption, in tokens")
    parser.add_argument("--prompt", help="instruction in place of the model's default one")
    parser.add_argument("--chunk-length-s", type=positive_float,
                        help="window for long audio (default: the encoder's input length)")
    parser.add_argument("--stride-length-s", type=non_negative_float, default=0.0,
                        help="overlap of consecutive windows, in seconds")
    parser.add_argument("--long-audio", default="chunks", choices=["chunks", "first_window"],
                        help="audio longer than the encoder's window: one caption per window, or of the first only")
    parser.add_argument("--silence-threshold-db", type=silence_threshold, default=-60.0,
                        help='audio whose peak is at or below this level (dBFS) is captioned "silence"; "off" '
                             "turns the check off")
    parser.add_argument("--prompt-preset", choices=["llava", "reference"],
                        help="system texts: none, or the authors' (default: the model's processor's)")
    parser.set_defaults(func=_run_caption)


def _run_caption(args) -> None:
    from .captioning import caption_files, find_media
    from .modeling.media import IMAGE_EXTENSIONS, MEDIA_EXTENSIONS

    extensions = MEDIA_EXTENSIONS + IMAGE_EXTENSIONS if args.mode == "image" else MEDIA_EXTENSIONS
    for folder in (p for p in args.inputs if os.path.isdir(p)):
        if not find_media([folder], extensions):
            print(f"warning: no {'image, ' if args.mode == 'image' else ''}audio or video file in {folder}",
                  file=sys.stderr)
    files = find_media(args.inputs, extensions)
    if not files:
        raise SystemExit("error: nothing to caption: no input file found")
    from transformers import pipeline

    _register()
    captioner = pipeline("audio-captioning", model=args.model)
    summary = caption_files(captioner, files, args.output, batch_size=args.batch_size, mode=args.mode,
                            frame=args.frame, preset=args.preset, max_new_tokens=args.max_new_tokens,
                            prompt=args.prompt, prompt_preset=args.prompt_preset,
                            chunk_length_s=args.chunk_length_s,
                            stride_length_s=args.stride_length_s, long_audio=args.long_audio,
                            silence_threshold_db=args.silence_threshold_db)
    print(f"{summary['captioned']} of {len(files)} files captioned -> {args.output}")
    for row in summary["failed"]:
        print(f"  failed: {row['file']}: {row['error']}")
    if summary["captioned"] == 0:
        raise SystemExit(f"error: no file could be captioned ({len(files)} failed)")


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", formatter_class=HELP_FORMAT,
        help="caption a benchmark and score it (BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE/SPIDEr with CoreNLP)",
        description="Writes captions.jsonl, scores.json and model_index.json (for a model card) to --output-dir. "
        "Decoding is greedy, so results are reproducible. One caption per clip: a clip longer than the audio "
        "encoder's window is captioned from its first window by default, as the paper scores AudioCaps and Clotho "
        "(--long-clips). Metric names and SPICE's availability are checked before any clip is captioned; "
        "scores.json lists the metrics left out and why.")
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id")
    parser.add_argument("--data", required=True, help="AudioCaps or Clotho csv, or a datasets.save_to_disk folder")
    parser.add_argument("--format", choices=["audiocaps", "clotho", "hf"], help="default: from the file")
    parser.add_argument("--audio-dir", help="folder of the audio files (csv formats)")
    parser.add_argument("--audio-filename", help='AudioCaps file naming, e.g. "{youtube_id}_{start_time}.wav" '
                                                 "(default: files named after the YouTube id, with or without "
                                                 "the start time)")
    parser.add_argument("--mode", default="audio", choices=["audio", "audiovisual"], help="what the model is given")
    parser.add_argument("--output-dir", required=True, help="folder of captions.jsonl, scores.json, model_index.json")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate() call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest caption, in tokens")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, metavar="METRIC",
                        help=f"some of {', '.join(METRICS)} (default: every metric that can run here)")
    parser.add_argument("--long-clips", default="first_window", choices=["first_window", "joined_chunks"],
                        help="clips longer than the encoder's window: a caption of the first window (the paper's "
                             "protocol), or the captions of every window joined")
    parser.add_argument("--dataset-name", help="name in the model-index block (default: from the format)")
    parser.add_argument("--split", default="test", help="split name in the model-index block")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> None:
    from .evaluation import (
        evaluate_captioner,
        metrics_to_compute,
        read_audiocaps,
        read_clotho,
        read_hf_dataset,
    )
    from .metrics import SpiceUnavailableError

    kind = args.format or _guess_format(args.data)
    if kind in ("audiocaps", "clotho") and not args.audio_dir:
        raise SystemExit(f"error: --audio-dir is needed with a {kind} csv")
    try:
        _, not_computed = metrics_to_compute(args.metrics)
    except SpiceUnavailableError as error:
        raise SystemExit(f"error: {error}") from None
    if kind == "audiocaps":
        data, missing = read_audiocaps(args.data, args.audio_dir, args.audio_filename)
    elif kind == "clotho":
        data, missing = read_clotho(args.data, args.audio_dir)
    else:
        import datasets

        data, missing = read_hf_dataset(datasets.load_from_disk(args.data))
    _register()
    name = args.dataset_name or {"audiocaps": "AudioCaps", "clotho": "Clotho"}.get(kind, Path(args.data).name)
    scores = evaluate_captioner(args.model, data, args.output_dir, mode=args.mode, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, metrics=args.metrics, dataset_name=name,
                                split=args.split, model_name=Path(args.model).name, missing=missing,
                                long_clips=args.long_clips)
    print(json.dumps(scores, indent=2))
    for metric, why in not_computed.items():
        print(f"{metric} not computed: {why}")
    if missing:
        print(f"{len(missing)} clips had no audio file (listed in {args.output_dir}/scores.json)")


def _guess_format(path: str) -> str:
    if os.path.isdir(path):
        return "hf"
    if not os.path.isfile(path):
        raise SystemExit(f"error: --data {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        header = handle.readline()
    if "youtube_id" in header:
        return "audiocaps"
    if "file_name" in header:
        return "clotho"
    raise SystemExit(f"error: cannot tell the format of {path}: pass --format")


def _add_push(subparsers) -> None:
    parser = subparsers.add_parser("push", formatter_class=HELP_FORMAT,
                                   help="upload a LlavaAudio folder (weights, config, processor, remote code, "
                                   "pipeline, model card) to the Hub")
    parser.add_argument("folder", help="a saved LlavaAudio folder")
    parser.add_argument("--repo-id", required=True, type=repo_id, help="org/name")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to upload to (created if needed; default: main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--dry-run", action="store_true", help="print the files that would be uploaded, and stop")
    parser.add_argument("--eval-results", nargs="*", default=[], type=eval_result, metavar="NAME=PATH",
                        help="scores.json files of `dali-hf evaluate` to put in the model card")
    parser.set_defaults(func=_run_push)


def _run_push(args) -> None:
    from .hub import UploadError, push

    results = {}
    for name, path in args.eval_results:
        try:
            report = json.loads(Path(path).read_text())
            results[name] = {"scores": report["scores"], "split": report.get("split", "test")}
        except (ValueError, KeyError, TypeError):
            raise SystemExit(f"error: {path} is not a scores.json of `dali-hf evaluate` (no \"scores\")") from None
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
                                   formatter_class=HELP_FORMAT,
                                   description="Stages 1a, 1b, 2a, 2b in <output_dir>/<stage>; done stages are "
                                   "skipped, interrupted ones resume.")
    parser.add_argument("--config", required=True, help="JSON or YAML recipe (see dali_hf.recipe.run_recipe)")
    parser.set_defaults(func=_run_train)


def _run_train(args) -> None:
    if not os.path.isfile(args.config):
        raise SystemExit(f"error: recipe file not found: {args.config}")
    from .recipe import check_recipe, run_recipe

    if args.config.endswith((".yaml", ".yml")):
        import yaml

        with open(args.config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    else:
        with open(args.config, encoding="utf-8") as handle:
            config = json.load(handle)
    try:
        check_recipe(config)
    except ValueError as error:
        raise SystemExit(f"error: {args.config}: {error}") from None
    _register()
    print(f"final captioner: {run_recipe(config)}")


def _register() -> None:
    """Register the LlavaAudio classes with the Auto classes (`import dali_hf` does it, except in this command,
    which defers it until a command runs)."""
    from ._registration import register

    register()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dali-hf")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dali-hf", description="DALI zero-shot audio captioning",
                                     formatter_class=HELP_FORMAT)
    parser.add_argument("--version", action="version", version=f"dali-hf {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_convert(subparsers)
    for name in TRAINING_STAGES:
        _add_training_stage(subparsers, name)
    _add_pseudo_caption(subparsers)
    _add_caption(subparsers)
    _add_evaluate(subparsers)
    _add_push(subparsers)
    _add_train(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    rest = argv[argv.index(args.command) + 1:]
    if args.command in TRAINING_STAGES:
        _run_training_stage(args.command, rest)
    elif args.command == "convert-official":
        _run_convert(rest)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    else:
        args.func(args)


if __name__ == "__main__":
    main()
