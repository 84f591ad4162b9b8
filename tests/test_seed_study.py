"""The seed study's own arithmetic: overrides as `dvc exp run -S` writes them, and the summary across seeds."""
import pytest

from benchmarks.seed_study import summary, with_setting


def test_settings_reach_list_items_by_index_and_parse_yaml_values():
    params = {"classifier": {"epochs": 4}, "datasets": {"clever_hans": {"shortcuts": [{"fraction": 0.95, "color": [1, 0, 0]}]}}}
    with_setting(params, "classifier.epochs=2")
    with_setting(params, "datasets.clever_hans.shortcuts.0.fraction=0.99")
    with_setting(params, "datasets.clever_hans.shortcuts.0.color=[0, 1, 0]")
    assert params == {"classifier": {"epochs": 2}, "datasets": {"clever_hans": {"shortcuts": [{"fraction": 0.99, "color": [0, 1, 0]}]}}}


def test_summary_reports_each_seed_and_the_spread():
    runs = [{"shortcut_reliance": r, "shortcut_base_rate": 0.01, "clean_accuracy": 0.99, "test_accuracy": 0.995}
            for r in (0.9, 0.6, 0.75)]
    result = summary([0, 1, 2], runs, [])
    assert result["shortcut_reliance"] == [0.9, 0.6, 0.75] and result["shortcut_reliance_min"] == 0.6
    assert result["shortcut_reliance_mean"] == pytest.approx(0.75) and result["shortcut_reliance_std"] == pytest.approx(0.15)


def test_summary_records_the_thread_count_of_each_run():
    runs = [{"shortcut_reliance": r, "shortcut_base_rate": 0.0, "clean_accuracy": 0.99, "test_accuracy": 0.995}
            for r in (0.95, 0.91, 0.93, 0.97)]
    result = summary([0, 1, 0, 1], runs, [], threads=[1, 1, 2, 2])
    assert result["seeds"] == [0, 1, 0, 1] and result["threads"] == [1, 1, 2, 2]
    assert result["shortcut_reliance_min"] == 0.91
    assert summary([0], runs[:1], [])["threads"] == [None]


def test_side_by_side_cpu_runs_default_to_one_thread_each(monkeypatch):
    from argparse import Namespace

    from benchmarks.seed_study import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(Namespace(jobs=3, device="cpu")) == 1
    assert default_threads(Namespace(jobs=1, device="cpu")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads(Namespace(jobs=3, device="cpu")) == 2
