"""Tiny randomly initialised models for launch checks, saved as Hub checkpoints would be: a ViT
(teacher and student of the multi-level recipe, student of the DAD recipe), a CLIP and a VQ model
(the DAD recipe's teacher and discretizer), all at the demo's 32 px.

    python benchmarks/tiny_models.py OUT_DIR

Prints one JSON object with the three folders.
"""

from __future__ import annotations

import argparse
import json
import os

import torch


def main(out: str) -> dict:
    from transformers import CLIPModel, ViTForImageClassification

    from hf_robust_distill import VQDiscretizer
    from hf_robust_distill.cli import (DEMO_CAPTIONS, build_word_tokenizer, demo_clip_config, demo_clip_image_processor,
                                       demo_image_processor, demo_vit_config, demo_vq_model)

    names = [str(i) for i in range(10)]
    paths = {kind: os.path.join(out, kind) for kind in ("vit", "clip", "vq")}
    torch.manual_seed(0)
    ViTForImageClassification(demo_vit_config(names, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64)).save_pretrained(paths["vit"])
    demo_image_processor().save_pretrained(paths["vit"])
    tokenizer = build_word_tokenizer([t.format(n) for n in names for t in DEMO_CAPTIONS])
    CLIPModel(demo_clip_config(tokenizer, hidden_size=32, vision_layers=2, text_layers=2, heads=2)).save_pretrained(
        paths["clip"])
    tokenizer.save_pretrained(paths["clip"])
    demo_clip_image_processor().save_pretrained(paths["clip"])
    VQDiscretizer(demo_vq_model(num_codes=64), input_range="[-1,1]").save_pretrained(paths["vq"])
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder that receives vit/, clip/ and vq/")
    print(json.dumps(main(parser.parse_args().out_dir)))
