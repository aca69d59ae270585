"""Small open_clip models saved in local-dir layout, for tests, benchmarks and the demo.

A local-dir model is a folder with open_clip_config.json (model_cfg + preprocess_cfg) and
open_clip_pytorch_model.bin, exactly what `--model local-dir:PATH` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_config(
    embed_dim: int = 32, image_size: int = 224, width: int = 64, layers: int = 2,
    patch_size: int = 32, text_width: int = 64, text_layers: int = 2, context_length: int = 77,
) -> dict[str, Any]:  # fmt: skip
    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {
                "image_size": image_size, "layers": layers, "width": width,
                "patch_size": patch_size, "head_width": 32,
            },
            "text_cfg": {
                "context_length": context_length, "vocab_size": 49408, "width": text_width,
                "heads": max(1, text_width // 32), "layers": text_layers,
            },
        },
        "preprocess_cfg": {
            "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
            "interpolation": "bicubic", "resize_mode": "shortest",
        },
    }  # fmt: skip


def save_local_dir(
    model: Any, config: dict[str, Any], folder: str | os.PathLike[str], half: bool = False
) -> Path:
    """Write a model in open_clip's local-dir layout (weights optionally as float16)."""
    import torch

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, out / "open_clip_pytorch_model.bin")
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return out


def make_tiny_model(folder: str | os.PathLike[str], seed: int = 0, **config: Any) -> Path:
    """A randomly initialised tiny CLIP (deterministic from `seed`) saved as local-dir."""
    import open_clip
    import torch

    cfg = tiny_config(**config)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg["model_cfg"])
    return save_local_dir(model, cfg, folder)
