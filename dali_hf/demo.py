"""`make demo`: the main job.

Until the toy audiovisual world lands, this builds a tiny *random* LlavaAudio captioner from configs,
saves it as a normal model folder, reloads it with `AutoModel` / `AutoProcessor`, and captions a generated
clip in the three input modes. The captions are noise: the weights are random. It shows the plumbing
(processor -> placeholders -> model -> generate) end to end, offline, in seconds.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from . import LlavaAudioForConditionalGeneration, LlavaAudioProcessor
from .tiny import tiny_audio_encoder, tiny_llava, tiny_llava_processor, tiny_tokenizer


def tone(frequency: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("DEMO_OUT", "outputs/demo"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    tokenizer, vocab_size = tiny_tokenizer()
    llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"))
    audio_config, feature_extractor = tiny_audio_encoder("ast")
    processor = LlavaAudioProcessor.from_llava(tiny_llava_processor(tokenizer), feature_extractor,
                                               audio_config=audio_config)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor)
    folder = out / "tiny-random-llava-audio"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    clip = tone(440.0)
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    results = {}
    for mode, kwargs in (
        ("image", dict(images=image)),
        ("audio", dict(audio=clip, sampling_rate=16000)),
        ("audiovisual", dict(images=image, audio=clip, sampling_rate=16000)),
    ):
        prompt = processor.caption_prompt(image="images" in kwargs, audio="audio" in kwargs,
                                          prefix=mode == "audiovisual")
        inputs = processor(text=prompt, return_tensors="pt", **kwargs)
        generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        caption = processor.decode(generated[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        results[mode] = caption
        print(f"{mode:>12}: {caption!r}")
    (out / "captions.json").write_text(json.dumps(results, indent=2))
    print(f"\nThe model is random (tiny configs, no training): these captions only show the plumbing.\n"
          f"Model folder: {folder}  captions: {out / 'captions.json'}")
    return results


if __name__ == "__main__":
    main()
