"""Launched by test_alignment.py, alone or under `accelerate launch --num_processes 2`: a short alignment run whose
logged loss and OT term are written as JSON by the main process. An optional last argument: "checkpoints" (save a
checkpoint every 4 steps) or a checkpoint folder to resume the run from. The model is given as a captioner folder, so the
trainer loads it without its language model. Data: the pairs as a map-style dataset, or streamed (a sharded,
shuffled `datasets.IterableDataset` through AlignmentStream, with each batch's OT solves split in two chunks).
It imports installed packages and fsdp_on_cpu beside it, so it runs as a script from any folder."""

import json
import os
import sys
from pathlib import Path

import fsdp_on_cpu  # noqa: F401  (launched with an FSDP config: FSDP2 on the CPU processes)
import torch
from transformers import AutoProcessor

from dali_hf.testing import pairs_dataset
from dali_hf.trainers import (
    AlignmentConfig,
    AlignmentStream,
    DistributionAlignmentTrainer,
    LlavaAudioAlignmentModel,
)


def main(output_dir: str, per_device_batch: int, objective: str, data: str, model_dir: str, option: str) -> None:
    torch.set_num_threads(1)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = AlignmentConfig(output_dir=output_dir, objective=objective, per_device_train_batch_size=per_device_batch,
                           learning_rate=1e-3, num_train_epochs=2, logging_steps=1,
                           save_strategy="steps" if option == "checkpoints" else "no", save_steps=4,
                           report_to=[], seed=0, use_cpu=True, disable_tqdm=True, uniform_epochs=1,
                           lambda_values=[0.05], lambda_final=0.05, ot_overlap_chunks=2 if data == "stream" else 1)
    train = pairs_dataset()
    if data == "stream":
        source = train.to_iterable_dataset(num_shards=4).shuffle(seed=2, buffer_size=4)
        train = AlignmentStream(source, processor, num_rows=len(train), decode_workers=2)
    trainer = DistributionAlignmentTrainer(model=model_dir, args=args, train_dataset=train, processing_class=processor)
    assert trainer.accelerator.num_processes == int(sys.argv[4]), 'not the requested number of processes'
    assert isinstance(trainer.model, LlavaAudioAlignmentModel), type(trainer.model)
    # an FSDP config really runs FSDP (fsdp_on_cpu lifts accelerate's refusal of it on CPU processes)
    assert trainer.is_fsdp_enabled == (os.environ.get("ACCELERATE_USE_FSDP") == "true"), 'FSDP fell back'
    trainer.train(resume_from_checkpoint=option if option not in ("", "checkpoints") else None)
    trainer.save_model(str(Path(output_dir, "final")))  # under FSDP: gathered from the shards
    if trainer.is_world_process_zero():
        logged = {name: [log[name] for log in trainer.state.log_history if name in log] for name in ("loss", "ot")}
        Path(output_dir, "losses.json").write_text(json.dumps(logged))
    # Free what holds the process group (the prepared model), then leave it: a gloo group still alive when the
    # interpreter shuts down can abort the process (SIGABRT), its worker threads releasing tensors without a GIL
    accelerator = trainer.accelerator
    del trainer
    accelerator.free_memory()
    accelerator.end_training()


if __name__ == "__main__":
    # argv[4]: the expected number of processes
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[5], sys.argv[6], sys.argv[7] if len(sys.argv) > 7 else "")
