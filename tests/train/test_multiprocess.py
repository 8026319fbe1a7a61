"""A real 2-process CPU run through `accelerate launch` (gloo) matches the 1-process loss trajectory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_script.py")


@pytest.mark.integration
def test_two_process_cmpo_matches_one_process(tmp_path, prepared, tiny_model_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29517"]
    two = subprocess.run(launcher + [str(SCRIPT), str(prepared), str(tmp_path / "two"), "2"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(SCRIPT), str(prepared), str(tmp_path / "one"), "4"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    r2 = json.loads((tmp_path / "two" / "result.json").read_text())
    r1 = json.loads((tmp_path / "one" / "result.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert len(r1["losses"]) == 3 and r1["losses"][-1] < r1["losses"][0]
    assert r2["losses"] == pytest.approx(r1["losses"], rel=1e-5, abs=1e-6)
