#!/usr/bin/env bash
# Creates .venv with the project's requirements and, when the raw MNIST files are on this machine
# but not yet under data/raw, links them there so the pipeline needs no download.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
if [ ! -e data/raw/MNIST/raw ]; then
  for candidate in "${MNIST_DIR:-}" ../shared/datasets/MNIST; do
    if [ -n "$candidate" ] && [ -d "$candidate/raw" ]; then
      mkdir -p data/raw && ln -sfn "$(cd "$candidate" && pwd)" data/raw/MNIST
      echo "setup: linked $candidate as data/raw/MNIST"
      break
    fi
  done
fi
echo "setup: ready (activate with: . .venv/bin/activate)"
