"""The benchmark's aggregation on constructed experiments: a found shortcut, a missed one, a false alarm on a clean
variant, a variant the classifier does not rely on, the development variant apart, and what was not judged."""
import json
import subprocess

import pytest
import yaml

from benchmarks.experiments import read_grid
from benchmarks.shortcut_benchmark import DETECTORS, aggregate, most_subtle_found, table, write
from benchmarks.sweep import ExperimentResult
from pipeline import paths

DATASET = "clever_hans"


def lift(value: float, low: float, high: float) -> tuple[float, float, float]:
    return value, low, high


def metrics(figures: dict[str, tuple | None], flagged: int | None = 0) -> dict:
    """{metrics file: data} with each detector's headline lift (None: not judged, written null)."""
    files: dict[str, dict] = {}
    for detector, (stage, figure) in DETECTORS.items():
        triple = figures.get(detector)
        values = dict(zip(("", "_low", "_high"), triple)) if triple else {"": None, "_low": None, "_high": None}
        files.setdefault(paths.metrics_path(DATASET, stage).as_posix(), {}).update(
            {f"{figure}_lift{end}": value for end, value in values.items()})
    files[paths.metrics_path(DATASET, "discover").as_posix()]["n_flagged_classes"] = flagged
    return files


def commit(repo, files: dict[str, dict], remove: list[str] = ()) -> str:
    for path in remove:
        (repo / path).unlink()
    for path, content in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(content))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@x", "commit", "-qm", "exp"], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def truth(reliance: float, occlusion: float = 0.01, base: float = 0.0, name: str = "7") -> dict:
    return {"shortcuts": [{"class": name, "kind": "square", "reliance": reliance, "base_rate": base,
                           "occlusion_rate": occlusion, "area_fraction": 0.08}]}


@pytest.fixture
def grid(tmp_path):
    square = {"label": 7, "kind": "square"}
    spec = {"dataset": DATASET, "stages": ["train_classifier"], "development": ["dev"],
            "shortcut_defaults": {"fraction": 0.95, "position": [0, 0], "size": 8, "strength": 1.0,
                                  "color": [1.0, 0.0, 0.0], "text": "09:41"},
            "sizes": {"cpu": {"seeds": [0], "params": {}}},
            "variants": [{"name": "found", "shortcuts": [square]}, {"name": "missed", "shortcuts": [square]},
                         {"name": "weak", "shortcuts": [square]}, {"name": "hidden", "shortcuts": [square]},
                         {"name": "clean", "shortcuts": [dict(square, fraction=0.0)]},
                         {"name": "dev", "shortcuts": [dict(square, side=20)]},
                         {"name": "absent", "shortcuts": [square]}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return read_grid(path)


def test_found_missed_false_alarm_reliance_and_development(tmp_path, grid):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    classifier = (paths.plots_dir(DATASET, "train_classifier") / "details.json").as_posix()
    discover = (paths.plots_dir(DATASET, "discover") / "details.json").as_posix()
    above, at_chance = lift(0.6, 0.4, 0.8), lift(0.02, -0.05, 0.09)
    cases = {
        "found": (truth(0.98), {d: above for d in DETECTORS}, 1, {"found_without_being_told": ["7"]}),
        "missed": (truth(0.95), {"attribution": above, "explain_masks": at_chance}, 0,
                   {"found_without_being_told": [], "classes": {"7": {"regions": [
                       {"trigger_rate": 0.31, "trigger_verdict": "above chance", "top": 0, "left": 0, "height": 4, "width": 4},
                       {"trigger_rate": 0.45, "trigger_verdict": "above chance", "top": 9, "left": 9, "height": 3, "width": 2},
                       {"trigger_rate": None, "top": 20, "left": 20, "height": 1, "width": 1}]}}}),
        "weak": (truth(0.30), {d: above for d in DETECTORS}, 1, {"found_without_being_told": ["7"]}),   # not relied on
        "hidden": (truth(0.99, occlusion=0.40), {d: above for d in DETECTORS}, 1, {"found_without_being_told": ["7"]}),
        "clean": (truth(0.0), {"attribution": above, "tracin": at_chance}, 2, {"found_without_being_told": []}),
        "dev": (truth(1.0), {d: above for d in DETECTORS}, 1, {"found_without_being_told": ["7"]}),
    }
    results = {}
    timing = {paths.timing_path(DATASET, stage).as_posix(): {"seconds": seconds}   # written by the "found" run alone
              for stage, seconds in (("explain", 100.0), ("train_gan", 20.5))}
    for name, (classifier_details, figures, flagged, discover_details) in cases.items():
        rev = commit(repo, {classifier: classifier_details, discover: discover_details} | (timing if name == "found" else {}),
                     remove=list(timing) if name == "missed" else [])
        results[f"{name}-s0"] = ExperimentResult(f"{name}-s0", rev, {"discover": {"min_trigger_rate": 0.5}},
                                                   metrics(figures, flagged))
    out = aggregate(grid, "cpu", results, cwd=repo)
    rows = {r["variant"]: r for r in out["variants"]}
    assert rows["found"]["detectors"]["discover"]["detected"] is True
    assert rows["missed"]["detectors"]["discover"]["detected"] is False
    assert rows["missed"]["detectors"]["attribution"]["detected"] is True
    assert rows["missed"]["detectors"]["explain_masks"] == {"detected": False, "lift": 0.02, "interval": [-0.05, 0.09]}
    assert rows["missed"]["detectors"]["tracin"]["detected"] is None            # not judged: null, never False
    assert rows["missed"]["detectors"]["discover"]["strongest_trigger"] == [
        {"class": "7", "trigger_rate": 0.45, "verdict": "above chance", "box": [9, 9, 3, 2]}]
    assert rows["found"]["detectors"]["discover"]["strongest_trigger"] == [None]   # no region measured
    assert rows["missed"]["detectors"]["discover"]["min_trigger_rate"] == 0.5       # the run's own flag bar
    assert rows["clean"]["detectors"]["discover"]["detected"] is True           # flagged a class where nothing is planted
    assert rows["weak"]["relied_on"] is False and rows["hidden"]["relied_on"] is False and rows["found"]["relied_on"]
    assert rows["absent"]["status"] == "not run"
    assert rows["found"]["stage_seconds"] == 120.5 and rows["missed"]["stage_seconds"] is None   # no timing files
    assert out["stage_seconds"] == {"median_per_variant": 120.5, "total": 120.5}
    summary = out["summary"]
    assert summary["discover"]["detection"] == {"rate": 0.5, "k": 1, "n": 2}      # found and missed; weak, hidden, dev apart
    assert summary["attribution"]["detection"] == {"rate": 1.0, "k": 2, "n": 2}
    assert summary["discover"]["detection_planted"] == {"rate": 0.75, "k": 3, "n": 4}   # weak and hidden count here
    assert summary["tracin"]["detection"] == {"rate": 1.0, "k": 1, "n": 1}
    assert summary["discover"]["false_alarms"] == {"rate": 1.0, "k": 1, "n": 1}
    assert summary["tracin"]["false_alarms"] == {"rate": 0.0, "k": 0, "n": 1}
    assert summary["dissection"]["development"] == [True]
    assert summary["attribution"]["most_subtle_found"] == {"square": "hidden"}    # the grid's last planted square
    assert "| attribution | hidden |" in table(out)
    assert "| found | 0.98 | 0.01 | – | ✔ +0.60" in table(out) and "| missed | 0.95 | 0.01 | 0.45 | ✘" in table(out)
    write(out, tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text())["n_done"] == 6
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_the_negative_control_record_names_its_false_alarms(tmp_path):
    """A workspace where discover flags nothing on the negative control but one detector is above chance there."""
    from benchmarks.negative_control import collect

    for dataset, flagged, figures in (("negative_control", 0, {"attribution": lift(0.1, 0.05, 0.15), "tracin": None}),
                                      ("clever_hans", 1, {d: lift(0.5, 0.4, 0.6) for d in DETECTORS})):
        for path, content in metrics(figures, flagged).items():
            target = tmp_path / path.replace(DATASET, dataset, 1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content))
        details = tmp_path / paths.plots_dir(dataset, "train_classifier") / "details.json"
        details.parent.mkdir(parents=True, exist_ok=True)
        details.write_text(json.dumps(truth(0.0 if dataset == "negative_control" else 0.9)))
    record = collect(tmp_path / "config.yaml", None, root=tmp_path)
    assert record["n_flagged_classes"] == 0
    assert record["negative_control"]["false_alarms"] == ["attribution"]
    assert record["negative_control"]["detectors"]["tracin"]["detected"] is None
    assert record["clever_hans"]["detectors"]["dissection"]["detected"] is True


def test_the_most_subtle_find_is_the_last_found_in_the_grid_order_per_kind():
    def row(variant, kind, detected, shortcuts=1):
        return {"variant": variant, "shortcuts": [{"kind": kind}] * shortcuts,
                "detectors": {"attribution": {"detected": detected}}}

    rows = [row("square-20", "square", True), row("square-4", "square", True), row("square-2", "square", False),
            row("text-5", "text", None), row("text-1", "text", False), row("two", "square", True, shortcuts=2)]
    assert most_subtle_found(rows, "attribution") == {"square": "square-4", "text": None}
