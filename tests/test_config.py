import copy

import pytest
import yaml

from pipeline.config import ConfigError, Params, build, load_params
from tests.conftest import REPO

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value):
    raw = copy.deepcopy(DEFAULTS)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.n_classes("colored_mnist") == len(params.colored_mnist.colormaps)
    assert params.n_classes("clever_hans") == 10


@pytest.mark.parametrize(
    "path, value, must_name",
    [
        ("classifier.epochs", -1, "classifier.epochs"),
        ("classifier.epochs", "three", "classifier.epochs"),
        ("classifier.architecture", "resnet", "'cnn', 'dense'"),
        ("device", "tpu", "'auto', 'cpu', 'cuda'"),
        ("colored_mnist.colormaps", ["spring", "not_a_cmap"], "colored_mnist.colormaps[1]"),
        ("clever_hans.shortcuts.0.label", 10, "clever_hans.shortcuts[0].label"),
        ("clever_hans.shortcuts.0.kind", "star", "square"),
        ("clever_hans.shortcuts.0.size", 0, "clever_hans.shortcuts[0].size"),
        ("clever_hans.shortcuts.0.fraction", 1.5, "clever_hans.shortcuts[0].fraction"),
        ("data.train_size", -5, "data.train_size"),
        ("data.train_size", 2.5, "data.train_size"),
        ("classifier.mixed_precision", "yes", "true or false"),
    ],
)
def test_invalid_values_name_key_and_allowed(path, value, must_name):
    with pytest.raises(ConfigError) as err:
        build(Params, with_change(path, value))
    assert must_name in str(err.value)
    shown = value[-1] if isinstance(value, list) else value  # a list names its bad element
    assert repr(shown) in str(err.value)


def test_unknown_key_lists_allowed_keys():
    raw = with_change("classifier.epoch", 3)  # typo of 'epochs'
    with pytest.raises(ConfigError, match=r"unknown key 'classifier.epoch'.*epochs"):
        build(Params, raw)


def test_unknown_top_level_section():
    raw = copy.deepcopy(DEFAULTS)
    raw["classifer"] = {}
    with pytest.raises(ConfigError, match="unknown key 'classifer'"):
        build(Params, raw)


def test_text_shortcut_rejects_unrenderable_characters():
    raw = with_change("clever_hans.shortcuts.0.kind", "text")
    raw["clever_hans"]["shortcuts"][0]["text"] = "12:AB"
    with pytest.raises(ConfigError, match="text"):
        build(Params, raw)


def test_cli_reports_config_error_without_traceback(tmp_path, capsys):
    from pipeline import prepare

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("classifier.epochs", 0)))
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["colored_mnist", "--params", str(bad)])
    assert exit_info.value.code == 2
    assert "classifier.epochs" in capsys.readouterr().err
