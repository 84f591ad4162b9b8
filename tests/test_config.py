import copy
import re

import pytest
import yaml

from pipeline.config import ConfigError, Params, build, load_params, to_dict
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


def test_repository_params_load_exactly_as_written():
    """Every value of params.yaml reaches the loaded params unchanged: none dropped, defaulted or altered."""
    assert to_dict(load_params(REPO / "params.yaml")) == DEFAULTS


def test_n_classes_of_colored_mnist_is_the_number_of_colormaps():
    params = build(Params, with_change("datasets.colored_mnist.colormaps", ["viridis", "magma", "cividis"]))
    assert params.datasets["colored_mnist"].n_classes == 3


@pytest.mark.parametrize(
    "path, value, must_name",
    [
        ("classifier.epochs", -1, "classifier.epochs"),
        ("classifier.epochs", "three", "classifier.epochs"),
        ("classifier.architecture", "vgg", "'cnn', 'dense', 'resnet'"),
        ("device", "tpu", "'auto', 'cpu', 'cuda'"),
        ("datasets.colored_mnist.colormaps", ["spring", "not_a_cmap"], "colored_mnist.colormaps[1]"),
        ("datasets.clever_hans.shortcuts.0.label", 10, "clever_hans.shortcuts[0].label"),
        ("datasets.clever_hans.shortcuts.0.kind", "star", "square"),
        ("datasets.clever_hans.shortcuts.0.side", 0, "clever_hans.shortcuts[0].side"),
        ("datasets.clever_hans.shortcuts.0.fraction", 1.5, "clever_hans.shortcuts[0].fraction"),
        ("data.train_size", -5, "data.train_size"),
        ("data.train_size", 2.5, "data.train_size"),
        ("classifier.mixed_precision", "yes", "true or false"),
        ("datasets.clever_hans.shortcuts.0.side", 40, "clever_hans.shortcuts[0].side"),
        ("datasets.clever_hans.shortcuts.0.position", [25, 25], "clever_hans.shortcuts[0].position"),
        ("data.train_size", 60_001, "data.train_size"),
        ("data.test_size", 10_001, "data.test_size"),
        ("data.root", "", "data.root"),
        ("attribution.n_images", 10_001, "attribution.n_images"),
        ("counterfactuals.n_images", 10_001, "counterfactuals.n_images"),
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
    raw = with_change("datasets.clever_hans.shortcuts.0.kind", "text")
    raw["datasets"]["clever_hans"]["shortcuts"][0]["text"] = "12:AB"
    with pytest.raises(ConfigError, match="text"):
        build(Params, raw)


def test_cli_reports_config_error_without_traceback(tmp_path, capsys):
    from pipeline.stages import prepare

    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_change("classifier.epochs", 0)))
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["colored_mnist", "--params", str(bad)])
    assert exit_info.value.code == 2
    assert "classifier.epochs" in capsys.readouterr().err


def with_shortcut(**fields):
    raw = copy.deepcopy(DEFAULTS)
    raw["datasets"]["clever_hans"]["shortcuts"][0].update(fields)
    return raw


@pytest.mark.parametrize(
    "fields, key, allowed",
    [
        ({"kind": "square", "side": 40}, "side", "an integer in 1..28"),
        ({"kind": "square", "position": [25, 25], "side": 4}, "position", "row in 0..24 and col in 0..24"),
        ({"kind": "square", "position": [0, 19], "side": 10}, "position", "col in 0..18"),
        ({"kind": "text", "text": "09:41:00:00", "side": 1}, "text", "at most 7 characters"),
        ({"kind": "text", "text": "09:41", "side": 2}, "side", "an integer in 1..1"),
        ({"kind": "text", "text": "09:41", "side": 1, "position": [24, 0]}, "position", "row in 0..23 and col in 0..9"),
        ({"kind": "watermark", "position": [20, 0], "side": 10}, "position", "row in 0..18"),
        ({"kind": "gradient", "position": [0, 0], "side": 29}, "side", "an integer in 1..28"),
    ],
)
def test_a_shortcut_must_fit_inside_the_image(fields, key, allowed):
    with pytest.raises(ConfigError) as err:
        build(Params, with_shortcut(**fields))
    message = str(err.value)
    assert message.startswith(f"params: datasets.clever_hans.shortcuts[0].{key} = ") and allowed in message


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "square", "position": [18, 18], "side": 10},
        {"kind": "text", "text": "09:41", "side": 1, "position": [23, 9]},
        {"kind": "text", "text": "0", "side": 5, "position": [3, 13]},
        {"kind": "gradient", "position": [0, 0], "side": 28},
    ],
)
def test_a_shortcut_touching_the_border_is_accepted(fields):
    build(Params, with_shortcut(**fields))


def test_two_shortcuts_may_not_share_a_class():
    raw = copy.deepcopy(DEFAULTS)
    first = raw["datasets"]["clever_hans"]["shortcuts"][0]
    raw["datasets"]["clever_hans"]["shortcuts"].append(dict(first, kind="watermark", side=6, position=[20, 20]))
    with pytest.raises(ConfigError, match=r"clever_hans.shortcuts\[1\].label = 7 .*one shortcut per class"):
        build(Params, raw)


def test_a_smaller_test_split_bounds_the_test_samples():
    raw = with_change("data.test_size", 300)
    raw["counterfactuals"]["n_images"] = 300
    raw["attribution"]["n_images"] = 301
    with pytest.raises(ConfigError, match=r"attribution.n_images = 301 .*at most 300.*data.test_size"):
        build(Params, raw)
    raw["attribution"]["n_images"] = 300
    build(Params, raw)


@pytest.mark.parametrize(
    "text, where",
    [
        ("seed: 0\ndata:\n  root: data/raw\n   source: mnist\n", "line 4, column 10"),  # over-indented key
        ("seed: 0\ndata: [mnist\n", "line 3"),                                        # unclosed list
        ("seed: 0\ndata:\n\troot: x\n", "line 3, column 1"),                          # a tab indent
        ("seed: 0\nseed: 1\n", "line 2, column 1"),                                   # the same key twice
    ],
)
def test_yaml_errors_name_the_file_and_line(tmp_path, text, where):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"params: {path} is not valid YAML at {where}") and "\n" not in message


def test_a_folder_is_not_a_params_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_params(tmp_path)


def image_folder_entry(**fields):
    raw = copy.deepcopy(DEFAULTS)
    shortcut = dict(raw["datasets"]["clever_hans"]["shortcuts"][0], position=[40, 40], side=20)
    raw["datasets"]["shapes"] = dict({"kind": "clever_hans", "source": "image_folder", "root": "shapes",
                                      "image_size": 64, "shortcuts": [shortcut]}, **fields)
    return raw


def test_an_image_folder_dataset_checks_its_shortcuts_against_its_own_image_size():
    params = build(Params, image_folder_entry())
    assert params.datasets["shapes"].image_shape == (64, 64) and params.datasets["shapes"].n_classes is None
    assert to_dict(params)["datasets"]["shapes"].keys() == {"kind", "source", "root", "image_size", "shortcuts"}
    assert "root" not in to_dict(params)["datasets"]["clever_hans"]       # an MNIST entry does not read it


@pytest.mark.parametrize("fields, must_name", [
    ({"image_size": 30}, "datasets.shapes.image_size = 30"),
    ({"image_size": 48}, "datasets.shapes.shortcuts[0].position = [40, 40]"),
    ({"root": None}, "datasets.shapes.root = None"),
    ({"kind": "colored_mnist", "shortcuts": None, "colormaps": ["spring", "summer"]}, "colored_mnist colors gray images"),
    ({"source": "mnist"}, "datasets.shapes.root = 'shapes'"),
])
def test_an_image_folder_entry_that_cannot_work_is_refused(fields, must_name):
    with pytest.raises(ConfigError, match=re.escape(must_name)):
        build(Params, image_folder_entry(**fields))


def own_images_entry(**fields):
    raw = copy.deepcopy(DEFAULTS)
    raw["datasets"]["mine"] = dict({"kind": "image_folder", "root": "photos", "image_size": 64,
                                    "classifier": {"torchvision": "resnet18", "weights": "resnet18.pt",
                                                   "gradcam_layer": "layer4", "features_layer": "avgpool"}}, **fields)
    return raw


def test_your_own_images_and_classifier_take_a_few_lines():
    entry = build(Params, own_images_entry()).datasets["mine"]
    assert entry.source == "image_folder" and entry.n_channels == 3
    assert not entry.classifier.trained_here
    written = to_dict(build(Params, own_images_entry()))["datasets"]
    assert set(written["mine"]) == {"kind", "source", "root", "image_size", "channels", "classifier"}
    assert "classifier" not in written["clever_hans"] and "channels" not in written["clever_hans"]
    gray = build(Params, own_images_entry(channels=1, classifier={"torchvision": "resnet18"})).datasets["mine"]
    assert gray.n_channels == 1 and gray.classifier.trained_here


@pytest.mark.parametrize("fields, must_name", [
    ({"channels": 2}, "datasets.mine.channels = 2"),
    ({"source": "mnist"}, "datasets.mine.source = 'mnist'"),
    ({"root": None}, "datasets.mine.root = None"),
    ({"classifier": {"weights": "w.pt"}}, "exactly one of torchvision"),
    ({"classifier": {"torchvision": "resnet18", "torchscript": "m.ts"}}, "exactly one of torchvision"),
    ({"classifier": {"torchvision": "resnet-18"}}, "datasets.mine.classifier.torchvision = 'resnet-18'"),
    ({"classifier": {"torchscript": "m.ts", "weights": "w.pt"}}, "a TorchScript file holds its own weights"),
    ({"classifier": {"torchvision": "resnet18", "mean": [0.5, 0.5, 0.5]}}, "mean and std are given together"),
    ({"classifier": {"torchvision": "resnet18", "mean": [0.5] * 3, "std": [0.2] * 2}}, "one number per channel"),
    ({"classifier": {"torchvision": "resnet18", "layer": "fc"}}, "unknown key 'datasets.mine.classifier.layer'"),
])
def test_an_own_images_entry_that_cannot_work_is_refused(fields, must_name):
    with pytest.raises(ConfigError, match=re.escape(must_name)):
        build(Params, own_images_entry(**fields))


@pytest.mark.parametrize("path", [f"{section}.{key}" for section, values in DEFAULTS.items() if isinstance(values, dict)
                                  and section != "datasets" for key in values])
def test_every_key_is_read_from_params_yaml_alone(path):
    """No default in code: a key left out of params.yaml is an error that names it and says what it may be."""
    raw = copy.deepcopy(DEFAULTS)
    section, key = path.split(".")
    del raw[section][key]
    with pytest.raises(ConfigError, match=rf"^params: missing key '{re.escape(path)}' \(.+\)$"):
        build(Params, raw)


@pytest.mark.parametrize("path, value", [
    ("classifier.learning_rate", float("inf")), ("gan.learning_rate", float("-inf")), ("explain.blur_sigma", float("nan")),
    ("spectra.C", float("inf")), ("datasets.clever_hans.shortcuts.0.fraction", float("nan")),
])
def test_a_number_is_never_inf_or_nan(path, value):
    with pytest.raises(ConfigError) as err:
        build(Params, with_change(path, value))
    key = re.sub(r"\.(\d+)\.", r"[\1].", path)
    assert str(err.value).startswith(f"params: {key} = {value!r} is not valid; allowed: ")


def test_inf_written_in_yaml_is_refused_with_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("learning_rate: 0.003", "learning_rate: .inf"))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == "params: classifier.learning_rate = inf is not valid; allowed: a positive number"


@pytest.mark.parametrize("path, value, allowed", [
    ("classifier.epochs", True, "a positive integer"),          # YAML's true is not the number 1
    ("classifier.learning_rate", "0.003", "a positive number"),  # nor is a quoted number
    ("gan.batch_size", 1, "an integer >= 2 (half latent-, half reference-guided)"),
    ("explain.methods", ["d_ig", "lime"], "one of 'd_ig', 'd_deeplift'"),
    ("explain.methods", [], "a non-empty list"),
    ("explain.max_pairs", 0, "a positive integer, or null"),
    ("discover.region_shape", "box", "one of 'hull', 'pixels'"),
    ("discover.n_permutations", 10, "at least 99 for alpha = 0.01"),
    ("dissect.quantile", 0.3, "a number in [0.5, 1)"),
    ("attribution.blur_kernel_size", 4, "an integer >= 3 (odd)"),
    ("datasets.clever_hans.shortcuts.0.color", [1.0, 0.0], "a list of 3 items, each a number in [0, 1] ([r, g, b])"),
    ("datasets.clever_hans.shortcuts.0.text", "09h41", "GLYPHS"),
    ("data.root", "  ", "a non-blank string"),
])
def test_ranges_and_choices_come_from_the_library_fields(path, value, allowed):
    with pytest.raises(ConfigError) as err:
        build(Params, with_change(path, value))
    message = str(err.value)
    shown = value[-1] if isinstance(value, list) and value and isinstance(value[-1], str) else value
    assert f"= {shown!r} is not valid; allowed: " in message and allowed in message and "\n" not in message


def test_sections_are_the_library_option_types_and_restate_none_of_their_fields():
    """A section extends the library's options with what its stage alone reads; it declares no field of theirs
    again (a field it must not take from params.yaml is not read: ``init=False``)."""
    import dataclasses

    from pipeline.config import options_from

    params = load_params(REPO / "params.yaml")
    extended = 0
    for field in dataclasses.fields(Params):
        section = type(getattr(params, field.name))
        for base in section.__mro__[1:]:
            if dataclasses.is_dataclass(base):
                extended += 1
                switched_off = {f.name for f in dataclasses.fields(section) if not f.init}
                restated = ({f.name for f in dataclasses.fields(base)} & set(vars(section).get("__annotations__", {}))
                            - switched_off)
                assert not restated, f"{section.__name__} restates {sorted(restated)} of {base.__name__}"
                assert options_from(getattr(params, field.name), base) == base(**{
                    f.name: getattr(getattr(params, field.name), f.name) for f in dataclasses.fields(base) if f.init})
    assert extended >= 11


def test_an_empty_shortcut_list_is_the_negative_control():
    """The same images and classifier with nothing planted: valid, and everything else is still checked."""
    raw = with_change("datasets.clever_hans.shortcuts", [])
    assert build(Params, raw).datasets["clever_hans"].shortcuts == []
    raw["datasets"]["clever_hans"]["source"] = "cifar"
    with pytest.raises(ConfigError, match=r"datasets.clever_hans.source = 'cifar'"):
        build(Params, raw)
    with pytest.raises(ConfigError, match=r"datasets.clever_hans.shortcuts = None .*needs its shortcuts"):
        build(Params, with_change("datasets.clever_hans.shortcuts", None))
