#!/usr/bin/env bash
# The whole pipeline on a laptop's CPU: both datasets, every stage, and the report, with params.yaml
# overridden by configs/laptop.yaml (fewer images, a smaller GAN, fewer pairs). It runs as a DVC
# experiment, so `dvc exp show` lists it beside other runs. The workspace keeps the experiment's
# params.yaml, metrics and report; `git checkout params.yaml dvc.lock` returns to the defaults.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
# One `-S key=value` per value of configs/laptop.yaml (nested keys joined by dots, values as JSON,
# which DVC reads as YAML).
mapfile -t overrides < <(.venv/bin/python - configs/laptop.yaml <<'PY'
import json, sys, yaml

def leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}={json.dumps(value)}"

for leaf in leaves(yaml.safe_load(open(sys.argv[1]))):
    print(f"-S\n{leaf}")
PY
)
. .venv/bin/activate   # the stages' `python` is the virtual environment's
started=$(date +%s)
dvc exp run -m "laptop configuration (configs/laptop.yaml)" "${overrides[@]}"
echo "laptop run: $(( $(date +%s) - started )) s; the report is report/index.html"
