#!/usr/bin/env bash
# Runs the whole default pipeline in one job (`dvc repro --force`: every stage of both datasets, one
# after another) from a clean copy of the COMMITTED code, and collects the results into one flat folder:
#
#   OUT_DIR/run.tar.gz    metrics/, dvc.lock, params.yaml, report/ and the small files under plots/
#   OUT_DIR/timing.json   wall time of every stage (metrics/timing.json)
#   OUT_DIR/summary.txt   commit, device, total wall time, per-stage seconds, headline metrics
#   OUT_DIR/repro.log     the output of dvc repro
#   OUT_DIR/machine.txt   GPU, driver, Python, torch, CUDA and dvc versions
#
# usage: bash benchmarks/gpu_run.sh OUT_DIR [--wheels DIR] [--mnist DIR] [--overrides FILE.yaml] [--keep]
#
#   --wheels DIR      install DIR/*.whl (dvc, dvclive, captum, ...; no dependency resolution, no network)
#                     into /tmp/site (or $GPU_RUN_SITE) and use the machine's python3 with it.
#                     Default: .whl/ when it exists. Without wheels: .venv/bin/python, else python3.
#   --mnist DIR       a folder holding the four raw MNIST files (*-ubyte or *-ubyte.gz).
#                     Default: .gpu-data/MNIST/raw when it exists, else data/raw/MNIST/raw, $MNIST_DIR/raw
#                     or ../shared/datasets/MNIST/raw (where setup.sh looks).
#   --overrides FILE  a partial params tree (like tests/tiny_params.yaml), deep-merged into params.yaml.
#   --keep            keep the temporary run copy (its path is printed); by default it is removed.
#
# Exit code: dvc repro's; results are collected even when it fails. 2: usage error; 1: the run could not
# start (the message says why).
set -euo pipefail

say() { echo "gpu_run: $*"; }
warn() { echo "gpu_run: WARNING: $*" >&2; }
die() { echo "gpu_run: ERROR: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2; }
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# ---- arguments (paths are taken relative to where the script is called from) ----------------------------
OUT="" WHEELS="" MNIST="" OVERRIDES="" KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels|--mnist|--overrides)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "gpu_run: $1 needs a value" >&2; usage; }
      case "$1" in
        --wheels) WHEELS=$(abspath "$2") ;;
        --mnist) MNIST=$(abspath "$2") ;;
        --overrides) OVERRIDES=$(abspath "$2") ;;
      esac
      shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_run: unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || { echo "gpu_run: more than one OUT_DIR ($OUT, $1)" >&2; usage; }
       OUT=$(abspath "$1"); shift ;;
  esac
done
[ -n "$OUT" ] || { echo "gpu_run: OUT_DIR is missing" >&2; usage; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ -f dvc.yaml ] && [ -f params.yaml ] || die "$REPO holds no dvc.yaml/params.yaml: run the script from the repository"
[ -z "$OVERRIDES" ] || [ -f "$OVERRIDES" ] || die "--overrides $OVERRIDES: no such file"
# The results go back over a channel that takes a few plain files: start from an empty folder so that only
# this run's files are in it.
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  die "OUT_DIR $OUT is not empty: give a new or empty folder"
fi
command -v git >/dev/null || die "git is not installed: DVC needs a git repository to run in"

# ---- 1. Python: wheels into a target folder (a bare GPU machine lacks dvc, dvclive, captum), or the venv ---
[ -n "$WHEELS" ] || { [ -d .whl ] && WHEELS=$REPO/.whl; } || true
if [ -n "$WHEELS" ]; then
  [ -d "$WHEELS" ] || die "--wheels $WHEELS: no such folder"
  shopt -s nullglob; wheels=("$WHEELS"/*.whl); shopt -u nullglob
  [ ${#wheels[@]} -gt 0 ] || die "--wheels $WHEELS holds no .whl files"
  PY=$(command -v python3) || die "python3 not found"
  SITE=${GPU_RUN_SITE:-/tmp/site}
  say "installing ${#wheels[@]} wheels from $WHEELS into $SITE"
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || die "pip could not install the wheels of $WHEELS into $SITE (see above)"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
elif [ -x .venv/bin/python ]; then
  PY=$REPO/.venv/bin/python
else
  PY=$(command -v python3) || die "no .venv/bin/python and no python3: run setup.sh or pass --wheels DIR"
fi
say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
# Fail now, not an hour into the run, when a stage's import would fail.
missing=$("$PY" -c '
import importlib.util
need = ["dvc", "dvclive", "captum", "torch", "torchvision", "numpy", "pandas", "scipy", "sklearn",
        "matplotlib", "seaborn", "yaml", "tqdm"]
print(" ".join(name for name in need if importlib.util.find_spec(name) is None))')
if [ -n "$missing" ]; then
  case " $missing " in *" dvc "*) warn "dvc is not installed for $PY: it runs the pipeline" ;; esac
  if [ -n "$WHEELS" ]; then
    die "Python packages missing for $PY with PYTHONPATH=$PYTHONPATH: $missing (add their wheels, and their dependencies' that the machine lacks, to $WHEELS)"
  fi
  die "Python packages missing for $PY: $missing (pass --wheels DIR holding their wheels, or run setup.sh)"
fi

# ---- 2. MNIST: find the four raw files before anything long starts -----------------------------------------
MNIST_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
missing_in() {   # prints the files $1 lacks (each may be plain or .gz)
  local name
  for name in "${MNIST_FILES[@]}"; do
    [ -s "$1/$name" ] || [ -s "$1/$name.gz" ] || printf '%s ' "$name"
  done
}
[ -n "$MNIST" ] || { [ -d .gpu-data/MNIST/raw ] && MNIST=$REPO/.gpu-data/MNIST/raw; } || true
if [ -n "$MNIST" ]; then
  [ -d "$MNIST" ] || die "--mnist $MNIST: no such folder"
  lacking=$(missing_in "$MNIST")
  [ -z "$lacking" ] || die "MNIST files missing in $MNIST: $lacking(each as itself or .gz)"
else
  looked=()
  for candidate in data/raw/MNIST/raw ${MNIST_DIR:+"$MNIST_DIR/raw"} ../shared/datasets/MNIST/raw; do
    looked+=("$candidate")
    if [ -d "$candidate" ] && [ -z "$(missing_in "$candidate")" ]; then MNIST=$(cd "$candidate" && pwd); break; fi
  done
  [ -n "$MNIST" ] || die "no MNIST files (${MNIST_FILES[*]}, or .gz) in any of: ${looked[*]}; pass --mnist DIR"
fi
say "MNIST: $MNIST"
mkdir -p "$OUT" || die "cannot create OUT_DIR $OUT"

# ---- 3. a clean copy of the committed code (a run must be reproducible from its commit) ---------------------
RUN_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
WORK=$RUN_ROOT/repo
cleanup() {
  if [ "$KEEP" = 1 ]; then say "run copy kept in $WORK"; else rm -rf "$RUN_ROOT"; fi
}
trap cleanup EXIT
# A checkout owned by another user (a copied tree) would make git refuse it as "dubious ownership".
GIT=(git -c safe.directory="$REPO" -c user.name=run -c user.email=run@localhost)
if [ -e .git ]; then
  "${GIT[@]}" clone -q "$REPO" "$WORK" || die "git clone of $REPO failed"
  COMMIT=$("${GIT[@]}" -C "$WORK" rev-parse HEAD)
  SOURCE="clean clone of the committed HEAD of $REPO"
  if [ -n "$("${GIT[@]}" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    warn "uncommitted changes in $REPO are NOT part of this run (it runs commit $COMMIT)"
  fi
else
  # The tree came without .git: copy it without environments, data and earlier outputs, and commit it so
  # that DVC (which needs git) works and the run has a commit to name.
  "$PY" -m benchmarks.collect_run copy-tree "$REPO" "$WORK" || die "copying $REPO failed"
  "${GIT[@]}" -C "$WORK" init -q
  "${GIT[@]}" -C "$WORK" add -A
  "${GIT[@]}" -C "$WORK" commit -qm "gpu_run: the tree as it arrived (no .git)"
  COMMIT="$("${GIT[@]}" -C "$WORK" rev-parse HEAD) (made by gpu_run: the tree came without .git)"
  SOURCE="copy of $REPO (no .git), committed locally"
fi
say "code: $SOURCE, commit $COMMIT"

# ---- 4. params overrides ---------------------------------------------------------------------------------
PARAMS_NOTE="params.yaml as committed"
if [ -n "$OVERRIDES" ]; then
  # The code is the commit's but the overrides file is taken as given: say so when it is a file of the
  # repository edited since (a key the committed code does not know would stop the first stage).
  rel=${OVERRIDES#"$REPO"/}
  if [ "$rel" != "$OVERRIDES" ] && [ -f "$WORK/$rel" ] && ! cmp -s "$WORK/$rel" "$OVERRIDES"; then
    warn "$rel differs from its committed version: the run merges the file as it is now into the committed params.yaml"
  fi
  "$PY" -m benchmarks.collect_run merge "$WORK/params.yaml" "$OVERRIDES" || die "merging $OVERRIDES into params.yaml failed"
  PARAMS_NOTE="params.yaml as committed, deep-merged with $(basename "$OVERRIDES") (the merged file is in run.tar.gz)"
fi

# ---- MNIST into the copy (torchvision reads <data.root>/MNIST/raw; .gz unpacked here, not by torchvision) --
RAW=$WORK/data/raw/MNIST/raw
mkdir -p "$RAW"
for name in "${MNIST_FILES[@]}"; do
  if [ -s "$MNIST/$name" ]; then cp -L "$MNIST/$name" "$RAW/$name"
  else gzip -dc "$MNIST/$name.gz" > "$RAW/$name" || die "cannot unpack $MNIST/$name.gz"
  fi
done
data_setting=$(cd "$WORK" && "$PY" -c 'import yaml; p = yaml.safe_load(open("params.yaml")); print(" ".join(sorted({d["source"] for d in p["datasets"].values()})), p["data"]["root"])')
[ "$data_setting" = "mnist data/raw" ] \
  || warn "params datasets.*.source/data.root are '$data_setting': the MNIST files placed in data/raw/MNIST/raw may not be read"

# ---- the machine: what the timings were measured on ----------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpus: $(nproc 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" -c '
import platform, torch, dvc
print("python:", platform.python_version())
print("torch:", torch.__version__, "| CUDA:", torch.version.cuda, "| cuDNN:", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i}:", torch.cuda.get_device_name(i))
print("dvc:", dvc.__version__)'
} > "$OUT/machine.txt" 2>&1 || true
if ! grep -q "cuda available: True" "$OUT/machine.txt"; then
  warn "no CUDA GPU visible to torch: the pipeline runs on the CPU (hours with the default params)"
fi

# ---- 5. dvc repro: every stage, sequentially ---------------------------------------------------------------
# dvc.yaml runs `python -m pipeline.<stage>`: make `python` this interpreter (python3 may be the only name).
mkdir -p "$RUN_ROOT/bin"
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" > "$RUN_ROOT/bin/python"
chmod +x "$RUN_ROOT/bin/python"
export PATH="$RUN_ROOT/bin:$PATH" PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
# --force: every stage runs and is timed, even one that a committed dvc.lock and committed outputs would
# call up to date.
say "dvc repro --force in $WORK (log: $OUT/repro.log)"
# Ctrl-C or a SIGTERM to the job's process group (a time limit) stops dvc and its stage, but not this script
# and not tee: what the finished stages wrote is still logged and collected below.
interrupted=""
trap 'interrupted=INT' INT
trap 'interrupted=TERM' TERM
start=$(date +%s.%N)
set +e
(cd "$WORK" && "$PY" -m dvc repro --force) 2>&1 | (trap '' INT TERM; exec tee "$OUT/repro.log")
rc=${PIPESTATUS[0]}
set -e
trap - INT TERM
[ -z "$interrupted" ] || warn "SIG$interrupted during dvc repro: collecting what the finished stages wrote"
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
say "dvc repro exited with $rc after $wall s"

# ---- 6. collect (also after a failure: partial results help) ---------------------------------------------
"$PY" -m benchmarks.collect_run collect "$WORK" "$OUT" --commit "$COMMIT" --exit-code "$rc" \
  --wall-seconds "$wall" --params-note "$PARAMS_NOTE" || warn "collecting the results failed (see above)"
# The channel back takes at most 8 plain files of at most 16 MiB, no folders: say so now if that broke.
n_files=$(find "$OUT" -mindepth 1 -maxdepth 1 | wc -l)
[ "$n_files" -le 8 ] || warn "$OUT holds $n_files entries (at most 8 travel back)"
big=$(find "$OUT" -mindepth 1 \( -type d -o -size +16M \) -printf '%P ')
[ -z "$big" ] || warn "folders or files over 16 MiB in $OUT: $big"
ls -l "$OUT"
exit "$rc"
