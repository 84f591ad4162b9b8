"""configs/laptop.yaml: every override names an existing param, and the merged params pass validation."""
import yaml

from benchmarks.reproducibility import merged
from pipeline.config import Params, build, to_dict
from tests.conftest import REPO

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())
LAPTOP = yaml.safe_load((REPO / "configs" / "laptop.yaml").read_text())


def leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys += leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def lookup(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


def test_every_laptop_override_names_an_existing_param():
    missing = []
    for key in leaf_keys(LAPTOP):
        try:
            lookup(DEFAULTS, key)
        except (KeyError, TypeError):
            missing.append(key)
    assert not missing, f"configs/laptop.yaml overrides params that params.yaml lacks: {missing}"


def test_laptop_params_validate_and_are_smaller_than_the_defaults():
    params = build(Params, merged(DEFAULTS, LAPTOP))
    assert to_dict(params)["gan"]["iterations"] == LAPTOP["gan"]["iterations"]
    assert params.data.train_size < 60_000 and params.gan.iterations < DEFAULTS["gan"]["iterations"]


def test_laptop_script_runs_the_config_as_a_dvc_experiment():
    script = (REPO / "laptop.sh").read_text()
    assert "configs/laptop.yaml" in script and "dvc exp run" in script
