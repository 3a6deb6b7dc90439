"""Issue 6.4: `torchrun --nproc_per_node 2 -m yelp_lora train` trains data-parallel (gloo on CPU) to
the metrics of one process on the same data, and rank 0 alone writes one adapter and run.json.

One process at batch 16 against two at batch 8 each: the same global batch and step count.
The tiny random BERT keeps both runs within the test budget on 2 shared cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, cli_env, run_cli, tiny_train_args, TINY_ENV

pytestmark = pytest.mark.slow


def test_two_processes_match_one_and_write_one_adapter(tiny_bert_dir, data_dir, tmp_path):
    schedule = ("--epochs", "2", "--lr", "3e-2", "--save-steps", "5")

    def args(output: Path, batch: str) -> list[str]:
        cli = tiny_train_args(tiny_bert_dir, data_dir, output, *schedule)
        cli[cli.index("--train-samples") + 1] = "128"
        cli[cli.index("--batch-size") + 1] = batch
        return cli

    single = run_cli(*args(tmp_path / "one", "16"), check=False, env=TINY_ENV)
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "yelp_lora", *args(tmp_path / "two", "8")]
    parallel = subprocess.run(command, capture_output=True, text=True, env=cli_env(**TINY_ENV), cwd=REPO, timeout=600)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert parallel.stdout.count("trainable params") == 2, "both ranks built the model"
    assert parallel.stdout.count("Run written to") == 1, "only rank 0 reports and writes"
    assert "find_unused_parameters" not in parallel.stderr, "DDP was told every trainable weight is used"

    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["global_step"] == two["global_step"] == 16
    assert two["data"]["train"]["fingerprint"] == one["data"]["train"]["fingerprint"]
    for a, b in zip(one["validation"], two["validation"]):
        assert abs(a["loss"] - b["loss"]) < 0.03, (a, b)  # a doubled DDP loss would be ~3.2
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.1, (a, b)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["adapter", "run.json"]
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()
