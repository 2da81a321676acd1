"""`dali-hf` command line: each subcommand is a thin wrapper over the library."""

import argparse
import os
import sys

__all__ = ["main"]


def _add_align(subparsers) -> None:
    parser = subparsers.add_parser(
        "align",
        help="stage 1b: align the audio encoder to the image tokens (DistributionAlignmentTrainer)",
        description="Any AlignmentConfig / TrainingArguments field is a flag too (e.g. --objective ot --solver "
        "sinkhorn --num_train_epochs 20 --per_device_train_batch_size 256 --output_dir out); --config reads them "
        "from a JSON or YAML file instead.",
    )
    parser.add_argument("--model", required=True, help="LlavaAudio folder or Hub id (model + processor)")
    parser.add_argument("--data", required=True, help="(audio, image) pairs: a `datasets.save_to_disk` folder")
    parser.add_argument("--eval-data", help="held-out pairs, same format (eval uses uniform OT weights)")
    parser.add_argument("--config", help="JSON/YAML file of AlignmentConfig fields")
    parser.add_argument("--resume", nargs="?", const=True, default=None,
                        help="resume from the last checkpoint in output_dir (or from the given checkpoint)")
    parser.set_defaults(func=_run_align)


def _run_align(args, extra: list[str]) -> None:
    import datasets
    from transformers import AutoModel, AutoProcessor, HfArgumentParser

    from .trainers import AlignmentConfig, DistributionAlignmentTrainer

    config_parser = HfArgumentParser(AlignmentConfig)
    if args.config:
        read = config_parser.parse_yaml_file if args.config.endswith((".yaml", ".yml")) else \
            config_parser.parse_json_file
        (config,) = read(args.config)
    else:
        (config,) = config_parser.parse_args_into_dataclasses(extra)
    model = AutoModel.from_pretrained(args.model)
    processor = AutoProcessor.from_pretrained(args.model)
    trainer = DistributionAlignmentTrainer(
        model=model, args=config, processing_class=processor, train_dataset=datasets.load_from_disk(args.data),
        eval_dataset=datasets.load_from_disk(args.eval_data) if args.eval_data else None,
    )
    trainer.train(resume_from_checkpoint=args.resume)
    trainer.save_model()
    processor.save_pretrained(config.output_dir)
    if trainer.is_world_process_zero():
        figure = os.path.join(config.output_dir, "token_distributions.png")
        trainer.plot_token_distributions(figure)
        print(f"token distributions: {figure}")
    print(f"aligned model written to {config.output_dir}")


def main(argv: list[str] | None = None) -> None:
    from .convert import add_convert_subcommand

    parser = argparse.ArgumentParser(prog="dali-hf", description="DALI zero-shot audio captioning")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_convert_subcommand(subparsers)
    _add_align(subparsers)
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "align":
        args.func(args, extra)
    else:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.func(args)


if __name__ == "__main__":
    main()
