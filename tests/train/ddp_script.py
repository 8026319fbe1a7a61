"""Run by test_multiprocess.py under `accelerate launch` (2 processes) and directly (1 process)."""

import json
import sys
from pathlib import Path

import torch.distributed as dist

from cmpo.train import runs
from cmpo.train.config import load_run_config

prepared, work, batch = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = load_run_config(None, ["model.name=tiny-random", "model.head_rank=4", "model.lora_rank=4",
                             "data.max_length=48", "data.max_prompt_length=24", "train.max_steps=3",
                             "train.logging_steps=1", "train.learning_rate=0.001", "train.disable_tqdm=true",
                             f"train.per_device_train_batch_size={batch}", f"train.output_dir={work / 'ckpt'}"])
result = runs.run_cmpo(cfg, prepared, work / "out")
world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
if result.trainer.args.process_index == 0:
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    (work / "result.json").write_text(json.dumps({"world_size": world, "losses": losses}))
