"""configs/*.yaml: every override names an existing param, and the merged params pass validation; laptop.sh runs them."""
import json

import pytest
import yaml

from benchmarks.experiments import read_config
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


def applied(path) -> dict:
    """params.yaml as `dvc exp run` writes it for a config file's arguments (laptop.sh's)."""
    return read_config(path).applied_to(DEFAULTS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_every_override_names_an_existing_param_and_the_params_validate(path):
    overrides = yaml.safe_load(path.read_text())
    removed = overrides.pop("remove", [])
    missing = []
    for key in leaf_keys(overrides) + removed:
        try:
            lookup(DEFAULTS, key)
        except (KeyError, TypeError):
            missing.append(key)
    assert not missing, f"{path.name} overrides params that params.yaml lacks: {missing}"
    params = to_dict(build(Params, applied(path)))
    assert all(lookup(params, key) == lookup(overrides, key) for key in leaf_keys(overrides))
    for key in removed:
        *parents, last = key.split(".")
        assert last not in lookup(params, ".".join(parents)) if parents else last not in params


def test_the_cpu_explain_config_keeps_full_data_and_a_gan_that_learns_the_shortcut():
    params = build(Params, applied(REPO / "configs" / "cpu_explain.yaml"))
    assert params.data.train_size is None and params.data.test_size is None
    assert_gan_measured_long_enough(params, data_config=None, config="configs/cpu_explain.yaml")


def test_the_laptop_gan_was_measured_on_the_laptop_data_and_runs_long_enough():
    assert_gan_measured_long_enough(build(Params, applied(REPO / "configs" / "laptop.yaml")), data_config="configs/laptop.yaml",
                                    config="configs/laptop.yaml")


def assert_gan_measured_long_enough(params: Params, data_config: str | None, config: str) -> None:
    """The config's GAN is one that benchmarks/gan_time_to_evidence.py measured on the config's data (``data_config``:
    its --data-config, None at full data), and it runs at least as many iterations as every such measurement needed to
    reach the GAN's targets (conversion, the stamp carried)."""
    cases = json.loads((REPO / "benchmarks" / "results" / "gan_time_to_evidence.json").read_text())["cases"]
    same = [case for case in cases if training_settings(case["settings"]) == training_settings(to_dict(params)["gan"])
            and case["run"].get("data_config") == data_config]
    assert same, f"{config}'s GAN settings were never measured by benchmarks/gan_time_to_evidence.py on its data"
    assert all(case["iterations_to_target"] is not None and case["iterations_to_target"] <= params.gan.iterations
               for case in same), [(case["case"], case["iterations_to_target"]) for case in same]


def training_settings(gan: dict) -> dict:
    """What a GAN learns with: the ``gan`` params less length, bookkeeping and (stargan has no mask) its mask weight."""
    moot = {"iterations", "checkpoint_every", "log_every", "max_loss", "n_grid_images"}
    moot |= {"mask_weight"} if gan["generator"] == "stargan" else set()
    return {key: value for key, value in gan.items() if key not in moot}


def test_laptop_params_validate_and_are_smaller_than_the_defaults():
    params = build(Params, applied(REPO / "configs" / "laptop.yaml"))
    assert "colored_mnist" not in params.datasets and {"clever_hans", "negative_control"} <= set(params.datasets)
    assert to_dict(params)["gan"]["iterations"] == LAPTOP["gan"]["iterations"]
    assert params.data.train_size < 60_000 and params.gan.iterations < DEFAULTS["gan"]["iterations"]


def test_laptop_script_runs_the_config_as_a_dvc_experiment():
    script = (REPO / "laptop.sh").read_text()
    assert "config=${1:-configs/laptop.yaml}" in script and 'dvc exp run -m "CPU configuration ($config)" "${overrides[@]}" "$@"' in script
    assert 'python -m benchmarks.experiments "$config"' in script


def test_a_config_file_becomes_dvc_exp_run_arguments_one_per_line(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "small.yaml"
    config.write_text("remove: [datasets.colored_mnist]\ndata:\n  train_size: 12000\nexplain:\n  methods: [d_ig, ig]\n")
    printed = subprocess.run([sys.executable, "-m", "benchmarks.experiments", str(config)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert printed == ["-S", "~datasets.colored_mnist", "-S", "data.train_size=12000", "-S", 'explain.methods=["d_ig","ig"]']
    params = read_config(config).applied_to(DEFAULTS)
    assert "colored_mnist" not in params["datasets"] and "colored_mnist" in DEFAULTS["datasets"]   # DEFAULTS untouched
    assert params["data"]["train_size"] == 12000 and params["data"]["root"] == DEFAULTS["data"]["root"]
    mixed_case = tmp_path / "My Laptop_v2.yaml"          # laptop.sh takes any file name: the name is only a label
    mixed_case.write_text(config.read_text())
    assert read_config(mixed_case).name == "my-laptop-v2" and read_config(mixed_case).set_args() == printed
    config.write_text("remove: datasets.colored_mnist\n")
    with pytest.raises(ValueError, match="remove must be a list"):
        read_config(config)


def test_laptop_sh_refuses_a_missing_config_before_setting_anything_up(tmp_path):
    import subprocess

    run = subprocess.run(["bash", str(REPO / "laptop.sh"), str(tmp_path / "none.yaml")], capture_output=True, text=True)
    assert run.returncode == 2 and "no config file" in run.stderr
