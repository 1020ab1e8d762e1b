#!/usr/bin/env bash
# The release check: build the sdist and the wheel (the wheel from the sdist), install the wheel into a fresh
# virtual environment (torch first: `pip install torch==2.13.0`, then the wheel and its requirements), and from a
# folder outside the source tree run `hf-selfish --help`, `import hf_selfish`, `hf-selfish recipes` and one tiny
# `hf-selfish train` of a bundled recipe by name. Needs the package registries only; tinyshakespeare comes from
# $HF_SELFISH_TINYSHAKESPEARE when set (the Makefile sets it from the shared copy), else it is downloaded.
#   make release-check          # or: bash scripts/release_check.sh   (about 3 minutes, most of it pip)
set -euo pipefail
cd "$(dirname "$0")/.."
source_tree=$PWD
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/hf_selfish_release.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH  # nothing from the source tree on the path: only what the wheel installed
started=$SECONDS
step() { echo "release-check [$((SECONDS - started)) s]: $*"; }
pip_install() {  # quiet; pip's full output only when it fails
  "$venv_python" -m pip install --quiet --no-compile "$@" > "$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
}

step "fresh virtual environment in $work/venv"
$PYTHON -m venv "$work/venv"
venv_python="$work/venv/bin/python"
pip_install build

step "python -m build (sdist, then the wheel from it)"
"$venv_python" -m build --outdir "$work/dist" "$source_tree" > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/hf_selfish-*.whl)
ls "$work"/dist/hf_selfish-*.tar.gz > /dev/null
"$venv_python" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = ["hf_selfish/py.typed", "hf_selfish/metrics/rank_bucket_nll/rank_bucket_nll.py",
          "hf_selfish/recipes/tinyshakespeare_cpu.yaml", "hf_selfish/recipes/accelerate/single_gpu.yaml"]
missing = [n for n in needed if n not in names]
assert not missing, f"the wheel lacks {missing}"
print(f"  {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files")
PY

step "pip install torch==2.13.0, then the wheel"
pip_install torch==2.13.0
pip_install "$wheel"

mkdir "$work/run"
cd "$work/run"
step "hf-selfish --help"
"$work/venv/bin/hf-selfish" --help > /dev/null
step "import hf_selfish"
"$venv_python" -c "import hf_selfish, sys; assert hf_selfish.__file__.startswith(sys.prefix), hf_selfish.__file__; print('  hf_selfish', hf_selfish.__version__, 'from', hf_selfish.__file__)"
step "hf-selfish recipes"
"$work/venv/bin/hf-selfish" recipes > "$work/recipes.txt"
grep "^tinyshakespeare_cpu " "$work/recipes.txt"
step "hf-selfish train tinyshakespeare_cpu (a tiny model, 4 steps)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$work/venv/bin/hf-selfish" train tinyshakespeare_cpu --arm selfish \
  --output_dir "$work/run/tiny" --max_steps 4 --warmup_steps 0 --per_device_train_batch_size 4 \
  --config_overrides n_layer=1,n_head=2,n_embd=32,n_positions=64 --max_eval_samples 64 --eval_on_start false \
  --eval_steps 4 --logging_steps 2 --save_strategy no --selfish_log_scenarios_every 0 > "$work/train.log" 2>&1 \
  || { tail -20 "$work/train.log"; exit 1; }
tail -1 "$work/train.log"
test -f "$work/run/tiny/run_result.json"
step "passed"
