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


# --------------------------------------------------------------------------------------------
# A stage reads only the params its dvc.yaml entry declares
# --------------------------------------------------------------------------------------------
def declared_view(params, *keys: str):
    from pipeline.runtime import DeclaredParams

    return DeclaredParams(params, frozenset(keys), "explain@clever_hans")


def test_declared_params_give_the_values_and_refuse_anything_else():
    from pipeline.runtime import UndeclaredParamError

    params = params_with()
    view = declared_view(params, "seed", "explain", "discover.n_trigger_images", "datasets.clever_hans")
    assert view.seed == params.seed and view.explain is params.explain        # a declared section: the value itself
    assert view.datasets["clever_hans"] is params.datasets["clever_hans"]
    for read in (lambda: view.gan, lambda: view.datasets["colored_mnist"], lambda: view.discover.method,
                 lambda: list(view.datasets), lambda: "clever_hans" in view.datasets, lambda: view.device):
        with pytest.raises(UndeclaredParamError) as refused:
            read()
        assert "dvc.yaml" in str(refused.value) and "explain@clever_hans" in str(refused.value)
    with pytest.raises(UndeclaredParamError, match="'datasets.colored_mnist'"):
        view.datasets["colored_mnist"]
    with pytest.raises(UndeclaredParamError, match="'discover.method'"):
        view.discover.method


def test_a_declared_key_inside_a_section_is_all_of_that_section_a_stage_sees():
    from pipeline.runtime import UndeclaredParamError

    params = params_with()
    view = declared_view(params, "explain.counterfactual")
    assert view.explain.counterfactual == params.explain.counterfactual
    with pytest.raises(UndeclaredParamError, match="'explain.methods'"):
        view.explain.methods
    assert not hasattr(view, "_value_of_nothing")   # Python's own probes get a plain AttributeError


def test_declared_params_are_read_from_the_stage_entry_with_its_dataset_filled_in(tmp_path):
    import yaml

    from pipeline.config import ConfigError
    from pipeline.runtime import declared_params

    pipeline = tmp_path / "dvc.yaml"
    pipeline.write_text(yaml.safe_dump({"stages": {"s": {
        "matrix": {"dataset": "${datasets}"}, "cmd": "python -m pipeline.stages.s ${item.dataset}",
        "params": ["seed", "datasets.${item.dataset}", {"params.yaml": ["gan.iterations"]}, {"other.yaml": ["x"]}]}}}))
    assert declared_params("s", "mine", pipeline) == {"seed", "datasets.mine", "gan.iterations"}
    with pytest.raises(ConfigError, match="declares no stage 'nothing'"):
        declared_params("nothing", "mine", pipeline)


def test_a_stage_run_by_hand_refuses_an_undeclared_read_and_runs_on_the_cpu_without_device(tmp_path, monkeypatch, capsys):
    """The same check ``dvc repro`` gets: a stage run reads its dvc.yaml (here one of the working directory)."""
    import yaml

    from pipeline.runtime import stage
    from tests.conftest import repo_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params({"device": "cuda"})))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": {
        "matrix": {"dataset": "${datasets}"}, "cmd": "python -m pipeline.stages.toy ${item.dataset}",
        "params": ["seed", "datasets.${item.dataset}"]}}}))
    with stage("toy", ["clever_hans"]) as ctx:
        assert ctx.device.type == "cpu"   # device: cuda is not this stage's to read (no GPU needed either)
        assert ctx.entry.kind == "clever_hans" and ctx.kind == "clever_hans"
        seen = torch.randperm(5, generator=ctx.generator())
    assert json.loads(Path("metrics/clever_hans/timing/toy.json").read_text())["device"] == "cpu"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped, stage("toy", ["clever_hans"]) as ctx:
        assert torch.equal(torch.randperm(5, generator=ctx.generator()), seen)
        ctx.params.classifier
    message = capsys.readouterr().err
    assert stopped.value.code == 2 and len(message.strip().splitlines()) == 1
    assert "toy@clever_hans" in message and "'classifier'" in message and "dvc.yaml" in message
