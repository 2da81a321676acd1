"""Fixtures shared by the test modules: tiny models built from configs by `dali_hf.testing`, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from dali_hf.testing import tiny_captioner, tiny_llava_parts

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def llava_parts():
    """(plain LLaVA model, its processor) at tiny size, shared: build a captioner that trains with
    `tiny_captioner()`, which makes its own."""
    return tiny_llava_parts()


@pytest.fixture(scope="session", params=["ast", "whisper"])
def captioner(request, llava_parts):
    """(LlavaAudio model, processor) around the tiny LLaVA, for each tested audio encoder."""
    return tiny_captioner(request.param, llava_parts=llava_parts)[:2]


@pytest.fixture(scope="session")
def ast_captioner(llava_parts):
    return tiny_captioner("ast", llava_parts=llava_parts)[:2]


@pytest.fixture(scope="session")
def make_trainer():
    """A function (data, output_dir, **AlignmentConfig overrides) -> a DistributionAlignmentTrainer of a new
    tiny AST captioner, with short CPU settings; `data`: a dataset, or a function of the processor that builds one."""
    from dali_hf.trainers import AlignmentConfig, DistributionAlignmentTrainer

    def make(data, output_dir, **overrides):
        model, processor, _ = tiny_captioner("ast")
        data = data(processor) if callable(data) else data
        settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3,
                        num_train_epochs=3, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, lambda_values=[0.05],
                        lambda_final=0.05, uniform_epochs=1)
        settings.update(overrides)
        return DistributionAlignmentTrainer(model=model, args=AlignmentConfig(**settings), train_dataset=data,
                                            processing_class=processor)

    return make

