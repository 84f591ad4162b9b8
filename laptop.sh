#!/usr/bin/env bash
# The whole pipeline on a laptop's CPU: every stage and the report, with params.yaml overridden by
# configs/laptop.yaml (fewer images, a smaller GAN, fewer pairs; Clever Hans and its negative control,
# the datasets that give the final answer, without colored MNIST). It runs as a DVC
# experiment, so `dvc exp show` lists it beside other runs. The workspace keeps the experiment's
# params.yaml, metrics and report; `git checkout params.yaml dvc.lock` returns to the defaults.
#
#   bash laptop.sh [CONFIG [STAGE ...]]
#
# CONFIG: another file of overrides (default configs/laptop.yaml; configs/cpu_explain.yaml keeps full data with a
# GAN and probes sized for 2 CPU cores); STAGEs: DVC targets that limit the run to them and what they
# depend on (default: every stage and the report).
set -euo pipefail
cd "$(dirname "$0")"
config=${1:-configs/laptop.yaml}
shift $(( $# > 0 ? 1 : 0 ))
[ -f "$config" ] || { echo "laptop.sh: no config file $config" >&2; exit 2; }
bash setup.sh
# One `-S key=value` per value of the config (nested keys joined by dots) and one `-S ~key` per key of its
# `remove` list (params.yaml keys the run goes without).
mapfile -t overrides < <(.venv/bin/python -m benchmarks.experiments "$config")
[ ${#overrides[@]} -gt 0 ] || { echo "laptop.sh: $config gives no overrides" >&2; exit 2; }
. .venv/bin/activate   # the stages' `python` is the virtual environment's
started=$(date +%s)
dvc exp run -m "CPU configuration ($config)" "${overrides[@]}" "$@"
echo "run of $config: $(( $(date +%s) - started )) s; metrics/ and plots/ hold its outputs (report/index.html when the report ran)"
