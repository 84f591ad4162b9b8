import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.runtime import StageContext, StageTimer, seed_everything, source_files
from tests.conftest import params_with


@pytest.fixture
def global_torch_state():
    """Put back what seed_everything changes process-wide: kernel modes, the cuBLAS setting, the global seeds."""
    saved = {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "benchmark": torch.backends.cudnn.benchmark,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    yield
    torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["warn_only"])
    torch.backends.cudnn.benchmark = saved["benchmark"]
    torch.backends.cuda.matmul.allow_tf32 = saved["matmul_tf32"]
    torch.backends.cudnn.allow_tf32 = saved["cudnn_tf32"]
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    if saved["cublas"] is not None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved["cublas"]
    random.setstate(saved["python"])
    np.random.set_state(saved["numpy"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None:
        torch.cuda.set_rng_state_all(saved["cuda"])


def test_seed_everything_switches_deterministic_algorithms_on_and_off(global_torch_state):
    seed_everything(3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())  # the same seeds either way


def stage_context(device: str) -> StageContext:
    return StageContext("colored_mnist", params_with(), torch.device(device),
                        StageTimer("train_gan", "colored_mnist", torch.device(device)))


def test_stage_generators_live_on_the_cpu_whatever_the_run_device():
    """Data order and sampling are drawn on the CPU, so CPU and GPU runs see the same images."""
    ctx = stage_context("cuda")
    stream = ctx.generator("/order")
    assert stream.device.type == "cpu"
    assert torch.equal(torch.randperm(10, generator=stream), torch.randperm(10, generator=ctx.generator("/order")))
    assert not torch.equal(torch.rand(8, generator=ctx.generator("/order")), torch.rand(8, generator=ctx.generator("/noise")))
    if torch.cuda.is_available():
        assert ctx.generator("/noise", ctx.device).device.type == "cuda"


def test_stage_timer_writes_its_details_beside_the_wall_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timer = StageTimer("train_gan", "colored_mnist", torch.device("cpu"), images=8)
    timer.details.update(iterations_run=2, iterations_per_second=4.0)
    timer.write()
    record = json.loads(Path("metrics/colored_mnist/timing/train_gan.json").read_text())
    assert record["stage"] == "train_gan@colored_mnist" and record["images"] == 8 and record["seconds"] >= 0
    assert record["iterations_run"] == 2 and record["iterations_per_second"] == 4.0


def test_source_files_follow_import_time_imports_inside_the_package(tmp_path, monkeypatch):
    package = tmp_path / "toy_stage_package"
    package.mkdir()
    sources = {
        "__init__": '"""A package whose modules import each other."""\n',
        "a": "import os\nfrom toy_stage_package import b\nfrom . import e\nimport toy_stage_package.skipped\n\n\n"
             "def later():\n    from toy_stage_package import c\n",
        "b": "import json\nfrom toy_stage_package.d import VALUE\n",
        "c": "from toy_stage_package import only_via_c\n",
        "d": "VALUE = 1\n",
        "e": "from .d import VALUE\n",
        "skipped": "from toy_stage_package import only_via_skipped\n",
        "only_via_c": "",
        "only_via_skipped": "",
    }
    for name, text in sources.items():
        (package / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = source_files("toy_stage_package.a", leave_out=("toy_stage_package.skipped",))
    assert list(found) == [f"toy_stage_package{suffix}" for suffix in ("", ".a", ".b", ".d", ".e")]
    assert found["toy_stage_package.b"] == package / "b.py"
    assert not any(name.startswith("toy_stage_package") for name in sys.modules)  # read, never imported
