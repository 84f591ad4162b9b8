"""Run the whole pipeline twice with the same params and report every metric that differs.

Both runs use the small workload of the end-to-end test (``tests/tiny_params.yaml`` merged into
``params.yaml``) in two temporary folders; timing files are left out of the comparison. Prints each
differing metric with both values, or that all are equal. Set ``deterministic: true`` in params.yaml
to see what deterministic kernels change on a GPU.

    python -m benchmarks.reproducibility --device cpu
    python -m benchmarks.reproducibility --device cuda
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from benchmarks.pipeline_throughput import REPO, STAGE_ORDER, run_stages


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def metrics_of(work: Path) -> dict:
    found = {}
    for path in sorted((work / "metrics").glob("*/*.json")):
        for key, value in flatten(json.loads(path.read_text())).items():
            found[f"{path.relative_to(work / 'metrics')}:{key}"] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-root", default=str(REPO / "data" / "raw"))
    parser.add_argument("--stages", nargs="*", default=STAGE_ORDER)
    args = parser.parse_args()
    tiny = yaml.safe_load((REPO / "tests" / "tiny_params.yaml").read_text())
    params = merged(yaml.safe_load((REPO / "params.yaml").read_text()), tiny)
    params["data"]["root"] = str(Path(args.data_root).resolve())
    params["device"] = args.device
    runs = []
    for _ in range(2):
        with tempfile.TemporaryDirectory(prefix="pipeline-repro-") as tmp:
            run_stages(Path(tmp), params, args.stages)
            runs.append(metrics_of(Path(tmp)))
    first, second = runs
    differing = sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))
    print(f"{len(first)} metric values compared, {len(differing)} differ")
    for key in differing:
        a, b = first.get(key), second.get(key)
        gap = f"  (|diff| {abs(a - b):.3g})" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        print(f"  {key}: {a} vs {b}{gap}")


if __name__ == "__main__":
    main()
