"""``cmpo model``: fetch/convert the built-in model, print where it lives and what it is."""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["fetch", "info"], help="fetch: build the cached safetensors copy; "
                        "info: print a model's config summary")
    parser.add_argument("--model", default="smollm2-135m", help="short name, HF id or local directory")


def run(args) -> int:
    from cmpo.models.loading import resolve_model_path

    path = resolve_model_path(args.model)
    if args.action == "fetch":
        print(path)
        return 0
    from cmpo.models.plural import CONFIG_NAME, is_plural_dir

    if is_plural_dir(path):
        from pathlib import Path

        print(json.dumps(json.loads((Path(path) / CONFIG_NAME).read_text()), indent=2))
        return 0
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    print(json.dumps({"path": path, "model_type": cfg.model_type,
                      "hidden_size": getattr(cfg, "hidden_size", None),
                      "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
                      "vocab_size": getattr(cfg, "vocab_size", None)}, indent=2))
    return 0
