"""`dali-hf` command line: each subcommand is a thin wrapper over the library.

Training subcommands take `--model` and `--data` (a `datasets.save_to_disk` folder in the column convention); every
field of the stage's TrainingArguments subclass is a flag too (`--output_dir out --num_train_epochs 20 ...`), or
comes from `--config file.json|yaml`. Progress bars are the Trainer's.

Building the parser imports nothing heavy: `dali-hf --help` and argument errors answer at once, and torch,
transformers and the model classes are imported (and registered with the Auto classes) only to run a command.
"""

import argparse
import gc
import json
import os
import sys
from pathlib import Path

from .metrics import ALL_METRICS
from .modeling.vocabulary import DECODING_PRESETS, LONG_AUDIO_POLICIES, MODES, PROMPT_PRESETS, stage_named

__all__ = ["main"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" after each option's help, except where the help already says its default, or where
    there is nothing to say (no default, an empty list, a flag that is off unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = any(action.default is value for value in (None, False, argparse.SUPPRESS)) or action.default == []
        if "(default" in text or nothing or not action.option_strings:
            return text
        return super()._get_help_string(action)


HELP_FORMAT = HelpFormatter


def _stage_help(name: str, note: str = "") -> str:
    """A stage subcommand's help: "stage 1b: " and the stage's summary (`STAGES`), then `note`."""
    stage = stage_named(name)
    return f"stage {stage.step}: {stage.summary}{note}"


# The subcommands are the stages' names (`STAGES` in `dali_hf.modeling.vocabulary`, which imports nothing heavy)
TRAINING_STAGES = {
    # subcommand: (trainer class, config class, help)
    "prefix-tune": ("PrefixTuningTrainer", "PrefixTuningConfig", _stage_help("prefix-tune")),
    "align": ("DistributionAlignmentTrainer", "AlignmentConfig",
              _stage_help("align", " (writes token_distributions.png)")),
    "distill": ("AudioVisualDistillationTrainer", "DistillationConfig", _stage_help("distill", " (--captions)")),
}
PSEUDO_CAPTION_HELP = _stage_help("pseudo-caption")
# --preset of caption and pseudo-caption: the pipeline's decoding presets
PRESET_HELP = "decoding: greedy (reproducible) or paper (temperature 0.2, as the reference code)"
# --prompt-preset of caption and pseudo-caption: the processor's prompt presets (default: the processor's own)
PROMPT_PRESET_HELP = "system texts: llava (none) or reference (the authors'); default: the model's processor's"


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
    from .hub import UploadError, check_repo_id

    try:
        return check_repo_id(text)
    except UploadError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
                              description=f"{help_text}. {__doc__.split(chr(10) * 2)[1]}", formatter_class=HELP_FORMAT)
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
    check_model(args.model)
    _check_stage_data(args)
    _register()
    train = _stream(args, config) if getattr(args, "stream", False) else datasets.load_from_disk(args.data)
    if name == "distill":
        train = trainers.attach_captions(train, datasets.load_from_disk(os.path.join(args.captions, "dataset")))
    evaluation = datasets.load_from_disk(args.eval_data) if getattr(args, "eval_data", None) else None
    trainer = recipe.run_training_stage(getattr(trainers, trainer_name), config, args.model, train,
                                        eval_dataset=evaluation)
    if trainer.is_world_process_zero():
        print(f"model written to {config.output_dir}")
    trainer.accelerator.free_memory()  # the prepared model holds the process group: see _leave_process_group


def _check_stage_data(args) -> None:
    """The data folders a training stage reads, checked before any model loads (with --stream, --data may also be a
    Hub id or data files: `datasets` reads those)."""
    if not getattr(args, "stream", False):
        _check_saved_dataset("--data", args.data)
    if getattr(args, "eval_data", None) is not None:
        _check_saved_dataset("--eval-data", args.eval_data)
    if getattr(args, "captions", None) is not None:
        _check_saved_dataset("--captions", args.captions, inside="dataset")


def _check_saved_dataset(flag: str, path: str, inside: str | None = None) -> None:
    """`path`, given as `flag`, is a folder written by `Dataset.save_to_disk` (or holds one in its subfolder
    `inside`, as `dali-hf pseudo-caption` writes), or a one-line error naming it and what to pass."""
    if _is_saved_dataset(os.path.join(path, inside) if inside else path):
        return
    found = ("no such folder" if not os.path.exists(path) else "a file, not a folder" if os.path.isfile(path)
             else f"no saved dataset in its {inside}/" if inside else "no saved dataset in it (no dataset_info.json)")
    fix = ("the --output-dir of `dali-hf pseudo-caption`" if inside
           else "a folder written by datasets' Dataset.save_to_disk")
    raise SystemExit(f"error: {flag} {path}: {found}: pass {fix}")


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_info.json", "dataset_dict.json"))


def _stream(args, config):
    """--data as a shuffled `datasets.IterableDataset` (the alignment trainer turns it into an AlignmentStream)."""
    import datasets

    from .trainers import AlignmentStream

    if _is_saved_dataset(args.data):
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
    if not {"-h", "--help"} & set(argv):
        _check_convert_files(argv)
    from .convert import add_convert_subcommand

    parser = argparse.ArgumentParser(prog="dali-hf", formatter_class=HELP_FORMAT)
    add_convert_subcommand(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert-official", *argv])
    _register()
    args.func(args)


def _check_convert_files(argv: list[str]) -> None:
    """The release's files that convert-official reads exist, checked before torch is imported."""
    files = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--audio-backbone", "--projector", "--prefix", "--audio-config", "--output-dir"):
        files.add_argument(flag)
    given, _ = files.parse_known_args(argv)
    for flag in ("--audio-backbone", "--projector", "--prefix", "--audio-config"):
        path = getattr(given, flag[2:].replace("-", "_"))
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"error: {flag} {path}: " + ("a folder, not the file: pass the file inside it"
                                                          if os.path.isdir(path) else "no such file"))
    if given.output_dir and os.path.isfile(given.output_dir):
        raise SystemExit(f"error: --output-dir {given.output_dir} is a file: pass a folder to write the model to")


# ---- the other subcommands ---------------------------------------------------------------------------------

def _add_pseudo_caption(subparsers) -> None:
    parser = subparsers.add_parser("pseudo-caption", help=PSEUDO_CAPTION_HELP,
                                   description="Writes pseudo_captions.jsonl ({id, caption}), skipped.jsonl ({id, "
                                   "reason}) and the dataset to --output-dir. After an interruption, rerun the same "
                                   "command with --resume. Under `accelerate launch --num_processes N` the rows are "
                                   "split between the processes and the files are those a single process writes.",
                                   formatter_class=HELP_FORMAT)
    parser.add_argument("--model", required=True, help="aligned LlavaAudio folder (after stages 1a and 1b)")
    parser.add_argument("--data", required=True, help="(audio, image) pairs: a datasets.save_to_disk folder")
    parser.add_argument("--output-dir", required=True, help="folder of the pseudo-captions")
    _add_job_flags(parser, "--output-dir")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate() call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128, help="longest caption, in tokens")
    parser.add_argument("--preset", default="greedy", choices=list(DECODING_PRESETS), help=PRESET_HELP)
    parser.add_argument("--paper-sampling", dest="preset", action="store_const", const="paper",
                        help=argparse.SUPPRESS)  # the former name of --preset paper
    parser.add_argument("--prompt-preset", choices=list(PROMPT_PRESETS), help=PROMPT_PRESET_HELP)
    parser.set_defaults(func=_run_pseudo_caption)


def _run_pseudo_caption(args) -> None:
    from .trainers.jobs import OutputError, check_output_dir
    from .trainers.pseudo_captions import PSEUDO_CAPTIONS_FILE, SKIPPED_FILE

    try:
        check_output_dir(args.output_dir, [PSEUDO_CAPTIONS_FILE, SKIPPED_FILE], resume=args.resume,
                         overwrite=args.overwrite)
    except OutputError as error:
        _job_output_error(error)
    import datasets
    from transformers import AutoModel, AutoProcessor

    from .trainers import generate_pseudo_captions
    from .trainers.jobs import job_state

    state = job_state()
    sampling = DECODING_PRESETS[args.preset]
    model = AutoModel.from_pretrained(args.model).to(state.device if state.num_processes > 1 else "cpu")
    result = generate_pseudo_captions(model, AutoProcessor.from_pretrained(args.model),
                                      datasets.load_from_disk(args.data), args.output_dir,
                                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                      prompt_preset=args.prompt_preset, resume=args.resume,
                                      overwrite=args.overwrite, progress=not args.quiet, **sampling)
    if state.is_main_process:
        print(f"{len(result)} pseudo-captions in {args.output_dir}")


def _add_caption(subparsers) -> None:
    parser = subparsers.add_parser(
        "caption", help="caption audio or video files (or images) with a LlavaAudio model", formatter_class=HELP_FORMAT,
        description="Writes one json line per file: {file, caption}, {file, chunks: [{caption, timestamp}, ...]} for "
        "audio longer than the encoder's window, or {file, error}; a file that decoded only in part is marked "
        "{partial: {decoded_s, duration_s}}. Unreadable files are reported in the output and the summary, and the "
        "run goes on; the exit status is 1 when no file was captioned. An existing --output is refused unless "
        "--resume or --overwrite. Under `accelerate launch --num_processes N` the files are split between the "
        "processes and the output is the one a single process writes.")
    parser.add_argument("inputs", nargs="+", help="files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id")
    parser.add_argument("--mode", default="audio", choices=MODES,
                        help="audio: the sound; audiovisual: the sound and a frame of each video (--frame); image: "
                             "image files (or a video frame) alone")
    parser.add_argument("--frame", default="middle", type=frame_position,
                        help='frame of a video for audiovisual / image mode: "middle", "first" or seconds')
    parser.add_argument("--batch-size", type=positive_int, default=1, help="inputs per generate() call")
    parser.add_argument("--output", default="captions.jsonl", help="json lines file to write")
    _add_job_flags(parser, "--output")
    parser.add_argument("--preset", default="greedy", choices=list(DECODING_PRESETS), help=PRESET_HELP)
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest caption, in tokens")
    parser.add_argument("--prompt", help="instruction in place of the model's default one")
    parser.add_argument("--chunk-length-s", type=positive_float,
                        help="window for long audio (default: the encoder's input length)")
    parser.add_argument("--stride-length-s", type=non_negative_float, default=0.0,
                        help="overlap of consecutive windows, in seconds")
    parser.add_argument("--long-audio", default="chunks", choices=LONG_AUDIO_POLICIES,
                        help="audio longer than the encoder's window: one caption per window, or of the first only")
    parser.add_argument("--silence-threshold-db", type=silence_threshold, default=-60.0,
                        help='audio whose peak is at or below this level (dBFS) is captioned "silence"; "off" '
                             "turns the check off")
    parser.add_argument("--prompt-preset", choices=list(PROMPT_PRESETS), help=PROMPT_PRESET_HELP)
    parser.set_defaults(func=_run_caption)


def _add_job_flags(parser, output: str) -> None:
    """--resume, --overwrite and --quiet of the commands that caption many inputs."""
    parser.add_argument("--resume", action="store_true",
                        help=f"keep what {output} already holds (after an interruption) and do only the rest")
    parser.add_argument("--overwrite", action="store_true", help=f"start {output} again")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _job_output_error(error) -> None:
    raise SystemExit(f"error: {error}") from None


def _run_caption(args) -> None:
    from .captioning import caption_files, scan_media
    from .modeling.media import IMAGE_EXTENSIONS, MEDIA_EXTENSIONS
    from .trainers.jobs import OutputError, check_output

    try:
        check_output(args.output, resume=args.resume, overwrite=args.overwrite)
    except OutputError as error:
        _job_output_error(error)
    extensions = MEDIA_EXTENSIONS + IMAGE_EXTENSIONS if args.mode == "image" else MEDIA_EXTENSIONS
    for folder in (p for p in args.inputs if os.path.isdir(p)):
        if not scan_media([folder], extensions)[0]:
            print(f"warning: no {'image, ' if args.mode == 'image' else ''}audio or video file in {folder}",
                  file=sys.stderr)
    files, skipped = scan_media(args.inputs, extensions)
    if not files:
        raise SystemExit("error: nothing to caption: no input file found" + _skipped_text(skipped))
    from transformers import pipeline

    from .trainers.jobs import job_state

    _register()
    state = job_state()
    device = state.device if state.num_processes > 1 else None
    captioner = pipeline("audio-captioning", model=args.model, device=device)
    try:
        summary = caption_files(captioner, files, args.output, batch_size=args.batch_size, progress=not args.quiet,
                                resume=args.resume, overwrite=args.overwrite, mode=args.mode,
                                frame=args.frame, preset=args.preset, max_new_tokens=args.max_new_tokens,
                                prompt=args.prompt, prompt_preset=args.prompt_preset,
                                chunk_length_s=args.chunk_length_s,
                                stride_length_s=args.stride_length_s, long_audio=args.long_audio,
                                silence_threshold_db=args.silence_threshold_db)
    except OutputError as error:
        _job_output_error(error)
    if state.is_main_process:
        resumed = f" ({summary['resumed']} of them already there)" if summary["resumed"] else ""
        print(f"{summary['captioned']} of {len(files)} files captioned{resumed} -> {args.output}"
              + _skipped_text(skipped))
        for row in summary["failed"]:
            print(f"  failed: {row['file']}: {row['error']}")
    if summary["captioned"] == 0:
        raise SystemExit(f"error: no file could be captioned ({len(files)} failed)")


def _skipped_text(skipped) -> str:
    """How many files of the folders were left out, by extension."""
    if not skipped:
        return ""
    kinds = ", ".join(f"{count} {extension or '(no extension)'}" for extension, count in sorted(skipped.items()))
    count = sum(skipped.values())
    return f"; {count} file{'s' if count > 1 else ''} skipped by extension ({kinds})"


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
    _add_job_flags(parser, "--output-dir")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="clips per generate() call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest caption, in tokens")
    parser.add_argument("--metrics", nargs="+", choices=ALL_METRICS, metavar="METRIC",
                        help=f"some of {', '.join(ALL_METRICS)} (default: every metric that can run here)")
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
    from .metrics import ScoringToolsMissingError
    from .trainers.jobs import OutputError, check_output_dir

    try:
        check_output_dir(args.output_dir, ["captions.jsonl"], resume=args.resume, overwrite=args.overwrite)
    except OutputError as error:
        _job_output_error(error)
    kind = args.format or _guess_format(args.data)
    if kind in ("audiocaps", "clotho") and not args.audio_dir:
        raise SystemExit(f"error: --audio-dir is needed with a {kind} csv")
    try:
        _, not_computed = metrics_to_compute(args.metrics)
    except ScoringToolsMissingError as error:  # the eval extra, Java or CoreNLP: said before the model loads
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
    try:
        scores = evaluate_captioner(args.model, data, args.output_dir, mode=args.mode, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, metrics=args.metrics, dataset_name=name,
                                    split=args.split, model_name=Path(args.model).name, missing=missing,
                                    long_clips=args.long_clips, resume=args.resume, overwrite=args.overwrite,
                                    progress=not args.quiet)
    except OutputError as error:
        _job_output_error(error)
    from .trainers.jobs import job_state

    if not job_state().is_main_process:
        return
    print(json.dumps(scores, indent=2))
    for metric, why in not_computed.items():
        print(f"{metric} not computed: {why}")
    failed = json.loads(Path(args.output_dir, "scores.json").read_text())["clips_failed"]
    if failed:
        print(f"{len(failed)} clips not scored (listed in {args.output_dir}/scores.json):")
        for row in failed:
            print(f"  failed: {row['id']}: {row['reason']}")


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
    from .model_folder import check_model_folder

    check_model_folder(args.folder, name="", hub=False)  # a local folder; nothing truncated or foreign goes up
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
    config = _read_recipe(args.config)
    from .model_folder import check_model_folder
    from .recipe import check_recipe, run_recipe

    try:
        check_recipe(config)
        check_model_folder(config["model"], name=f"{args.config}: model")
    except ValueError as error:
        raise SystemExit(f"error: {args.config}: {error}" if not str(error).startswith(args.config)
                         else f"error: {error}") from None
    _register()
    print(f"final captioner: {run_recipe(config)}")


def _read_recipe(path: str):
    """The recipe file's content (JSON, or YAML for .yaml / .yml), or a one-line error saying where it is broken."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: recipe file not found: {path}" + (" (this is a folder)" if os.path.isdir(path)
                                                                     else ""))
    import yaml

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: {path} is not valid JSON: {error.msg} at line {error.lineno}, column "
                         f"{error.colno}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SystemExit(f"error: {path} is not valid YAML: {problem}{where}") from None


def _register() -> None:
    """Register the LlavaAudio classes with the Auto classes (`import dali_hf` does it, except in this command,
    which defers it until a command runs; see modeling/auto_classes.py)."""
    from .modeling.auto_classes import register

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
    try:
        if args.command in TRAINING_STAGES:
            _run_training_stage(args.command, rest)
        elif args.command == "convert-official":
            _run_convert(rest)
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        else:
            if args.command == "caption" and args.mode == "audiovisual":
                _check_audiovisual_inputs(args.inputs)
            if args.command == "evaluate":
                _check_evaluate_data(args.data, args.format, args.audio_dir)
            if getattr(args, "model", None) is not None:  # caption, pseudo-caption, evaluate: they load it
                check_model(args.model)
                if args.command == "pseudo-caption":
                    _check_saved_dataset("--data", args.data)
                _register()
            args.func(args)
        _leave_process_group()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_after_interrupt(args, rest)}", file=sys.stderr)
        raise SystemExit(130) from None
    except ValueError as error:
        from .errors import InputError

        if not isinstance(error, InputError):
            raise
        raise SystemExit(f"error: {error}") from None


def _leave_process_group() -> None:
    """Under `accelerate launch`, each process leaves the process group once its command is done (accelerate's
    `end_training` does the same), after freeing what holds it (a training command frees its prepared model with
    `Accelerator.free_memory`; the Trainer itself is a reference cycle). A gloo group still alive when the interpreter
    shuts down can abort the process (SIGABRT, "terminate called without an active exception": its worker threads
    release tensors that need the GIL, pytorch/pytorch#190489) while the others still run, and the launcher then
    kills them; freed here, the group's threads are joined while Python runs."""
    torch = sys.modules.get("torch")  # a command that never imported torch started no group
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def check_model(path: str) -> None:
    """A `--model` that is not a saved LlavaAudio captioner is a one-line error (`dali_hf.model_folder`), before any
    loading; every command that takes `--model` calls this."""
    from .model_folder import check_model_folder

    check_model_folder(path)


def _check_audiovisual_inputs(inputs: list[str]) -> None:
    """`caption --mode audiovisual` takes its image from each video: audio files alone are an error, audio files
    among videos a warning (they are reported as failed)."""
    from .captioning import find_media
    from .modeling.media import MEDIA_EXTENSIONS, is_video

    files = find_media(inputs, MEDIA_EXTENSIONS)
    audio = [path for path in files if not is_video(path)]
    if not audio:
        return
    named = ", ".join(audio[:3]) + (f" and {len(audio) - 3} more" if len(audio) > 3 else "")
    if len(audio) == len(files):
        raise SystemExit(f"error: --mode audiovisual captions videos (their sound and a frame), and {named} "
                         f"{'is not a video' if len(audio) == 1 else 'are not videos'}: caption audio files with "
                         "--mode audio")
    print(f"warning: --mode audiovisual needs a video's frame: {named} will fail (caption audio files with "
          "--mode audio)", file=sys.stderr)


def _check_evaluate_data(data: str, kind: str | None, audio_dir: str | None) -> None:
    """evaluate's --data is a csv file for the csv formats and a save_to_disk folder for hf; --audio-dir a folder."""
    if not os.path.exists(data):
        raise SystemExit(f"error: --data {data}: no such file or folder")
    if kind == "hf" and os.path.isfile(data):
        raise SystemExit(f"error: --data {data} is a file, and --format hf reads a folder written by datasets' "
                         "Dataset.save_to_disk: for a csv pass --format audiocaps or clotho, or leave --format out")
    if kind in ("audiocaps", "clotho") and os.path.isdir(data):
        raise SystemExit(f"error: --data {data} is a folder, and --format {kind} reads a csv file: for a "
                         "save_to_disk folder pass --format hf, or leave --format out")
    if audio_dir is not None and not os.path.isdir(audio_dir):
        raise SystemExit(f"error: --audio-dir {audio_dir}: " + ("a file, not a folder" if os.path.isfile(audio_dir)
                                                                else "no such folder"))


def _after_interrupt(args, rest: list[str]) -> str:
    """What an interrupted command left, and how to go on."""
    command = args.command
    if command in TRAINING_STAGES:
        output = _flag_value(rest, "--output_dir") or "its --output_dir"
        return (f"the checkpoints saved so far are in {output}; run the same command again to resume from the last "
                "one (a checkpoint every --save_steps)")
    if command == "train":
        try:
            output = _read_recipe(args.config)["output_dir"]
        except (SystemExit, KeyError, TypeError):
            output = "the recipe's output_dir"
        return (f"finished stages and the interrupted stage's checkpoints are in {output}; run the same command again: "
                "finished stages are skipped and the interrupted one resumes")
    if command in ("caption", "pseudo-caption", "evaluate"):
        from .trainers.pseudo_captions import PSEUDO_CAPTIONS_FILE

        output = args.output if command == "caption" else os.path.join(
            args.output_dir, PSEUDO_CAPTIONS_FILE if command == "pseudo-caption" else "captions.jsonl")
        return (f"every line written so far is kept in {output} (or its .part-* shares); rerun the same command with "
                "--resume to do the rest")
    if command == "convert-official":
        output = _flag_value(rest, "--output-dir") or "the --output-dir"
        return f"{output} may be incomplete: delete it and run the command again"
    return "nothing was committed to the Hub (an upload is one commit, all or nothing); run the command again"


def _flag_value(argv: list[str], flag: str) -> str | None:
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


if __name__ == "__main__":
    main()
