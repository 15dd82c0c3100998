"""The CUDA path: bf16/fp16 autocast, channels_last, torch.compile, a 1-process NCCL context. Skipped without a GPU
(CI has none); scripts/gpu_check.sh runs them on a machine that has one."""

from __future__ import annotations

import pytest
import torch

from fermetric import engine
from fermetric.runfolder import RunFolder
from fermetric.training.optim import amp_dtype

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
QUICKSTART = "recipes/quickstart.toml"


def test_autocast_dtype_follows_the_gpu():
    dtype = amp_dtype(torch.device("cuda"), True)
    major = torch.cuda.get_device_capability()[0]
    assert dtype == (torch.bfloat16 if major >= 8 else torch.float16)
    assert amp_dtype(torch.device("cuda"), False) is None and amp_dtype(torch.device("cpu"), True) is None


@pytest.mark.parametrize("extra", [[], ["train.channels_last=false"], ["train.compile=true"], ["train.amp=false"]],
                         ids=["amp+channels_last", "amp", "compile", "fp32"])
def test_a_run_trains_on_the_gpu(tmp_path, tiny_overrides, extra):
    metrics, out = engine.run_recipe(QUICKSTART, str(tmp_path / "run"), tiny_overrides + ['train.device="cuda"', "train.epochs=3", *extra])
    folder = RunFolder(out)
    info = folder.run_info()
    assert info["device"].startswith("cuda") and info["gpu_peak_memory_mb"] > 0
    losses = [float(r["train_loss"]) for r in folder.history()]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert 0 <= metrics["accuracy"] <= 1


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path, tiny_overrides):
    _, out = engine.run_recipe(QUICKSTART, str(tmp_path / "run"), tiny_overrides + ['train.device="cuda"', "train.epochs=1"])
    state = torch.load(RunFolder(out).last_checkpoint, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in state["model"].values())
