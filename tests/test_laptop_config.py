"""configs/*.yaml: every override names an existing param, and the merged params pass validation; laptop.sh runs them."""
import json

import pytest
import yaml

from benchmarks.reproducibility import merged
from pipeline.config import Params, build, to_dict
from tests.conftest import REPO

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())
LAPTOP = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def lookup(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_override_names_an_existing_param_and_the_params_validate(path):
    overrides = yaml.safe_load(path.read_text())
    missing = []
    for key in leaf_keys(overrides):
        try:
            lookup(DEFAULTS, key)
        except (KeyError, TypeError):
            missing.append(key)
    assert not missing, f"{path.name} overrides params that params.yaml lacks: {missing}"
    params = to_dict(build(Params, merged(DEFAULTS, overrides)))
    assert all(lookup(params, key) == lookup(overrides, key) for key in leaf_keys(overrides))


def test_the_cpu_explain_config_keeps_full_data_and_a_gan_that_learns_the_shortcut():
    params = build(Params, merged(DEFAULTS, yaml.safe_load((REPO / "configs" / "cpu_explain.yaml").read_text())))
    assert params.data.train_size is None and params.data.test_size is None
    # Its GAN is one that benchmarks/gan_time_to_evidence.py measured at full data, and it runs at least as many
    # iterations as every such measurement needed to reach the GAN's targets (conversion, the stamp carried).
    cases = json.loads((REPO / "benchmarks" / "results" / "gan_time_to_evidence.json").read_text())["cases"]
    same = [case for case in cases if training_settings(case["settings"]) == training_settings(to_dict(params)["gan"])
            and case["run"].get("data_config") is None]   # measured at full data, as this config trains
    assert same, "configs/cpu_explain.yaml's GAN settings were never measured by benchmarks/gan_time_to_evidence.py"
    assert all(case["iterations_to_target"] is not None and case["iterations_to_target"] <= params.gan.iterations
               for case in same), [(case["case"], case["iterations_to_target"]) for case in same]


def training_settings(gan: dict) -> dict:
    """What a GAN learns with: the ``gan`` params less length, bookkeeping and (stargan has no mask) its mask weight."""
    moot = {"iterations", "checkpoint_every", "log_every", "max_loss", "n_grid_images"}
    moot |= {"mask_weight"} if gan["generator"] == "stargan" else set()
    return {key: value for key, value in gan.items() if key not in moot}


def test_laptop_params_validate_and_are_smaller_than_the_defaults():
    params = build(Params, merged(DEFAULTS, LAPTOP))
    assert to_dict(params)["gan"]["iterations"] == LAPTOP["gan"]["iterations"]
    assert params.data.train_size < 60_000 and params.gan.iterations < DEFAULTS["gan"]["iterations"]


def test_laptop_script_runs_the_config_as_a_dvc_experiment():
    script = (REPO / "laptop.sh").read_text()
    assert "config=${1:-configs/laptop.yaml}" in script and 'dvc exp run -m "CPU configuration ($config)" "${overrides[@]}" "$@"' in script


def test_laptop_sh_refuses_a_missing_config_before_setting_anything_up(tmp_path):
    import subprocess

    run = subprocess.run(["bash", str(REPO / "laptop.sh"), str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert run.returncode == 2 and "no config file" in run.stderr
