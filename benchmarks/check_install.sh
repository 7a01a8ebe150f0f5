#!/usr/bin/env bash
# Does a plain `pip install centerloss` (core only, no extras) work on top of an existing torch?
#
# In a fresh venv holding only torch, installs a copy of this checkout (non-editable, no -c constraints),
# then checks: no optional package came along, torch was not touched, the core imports pull in no
# cv2/matplotlib/sklearn, the CLI's help pages work, a tiny `centerloss train` runs on synthetic images
# (with and without runtime.tensorboard, tensorboard not installed), `eval lfw --features` runs, the
# commands that take aligned crops (verify/embed/gallery --aligned) run without OpenCV, and the commands
# that truly need an extra (align, export) fail with one line naming it (`pip install centerloss[...]`),
# not a traceback. Prints PASS/FAIL per check; the exit status is the number of failures (0: all passed).
#
# Usage: bash benchmarks/check_install.sh            (from anywhere; about 1-2 minutes on 2 CPU cores)
#   TORCH=2.14.1 bash benchmarks/check_install.sh    the torch release to start from [2.13.0]
#   PYTHON=python3.12 KEEP=1 ...                     interpreter for the venv; keep the temp folder
# The checkout is copied (without .git, .venv, runs, build outputs) so that its tree is not written to,
# and the uncommitted work is what gets tested. Needs the package index for torch (this machine: /opt/wheels).
set -u
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-2.13.0}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cl_check_install.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$TMP"' EXIT
V="$TMP/venv/bin"
FAILS=0
LOG="$TMP/last.log"

# check NAME CMD...: run CMD (output to $LOG), PASS on exit 0, else FAIL with the output's last lines.
check() {
    local name=$1; shift
    if "$@" > "$LOG" 2>&1; then
        echo "PASS  $name"
    else
        echo "FAIL  $name (exit $?)"
        tr '\r' '\n' < "$LOG" | grep -v 'step/s\|it/s' | tail -n 6 | sed 's/^/        /'
        FAILS=$((FAILS + 1))
        return 1
    fi
}

# one_line_error EXTRA CMD...: CMD must exit 2 and print exactly one line naming `centerloss[EXTRA]`.
one_line_error() {
    local extra=$1; shift
    local rc=0
    "$@" > "$TMP/err.txt" 2>&1 || rc=$?
    cat "$TMP/err.txt"
    [ "$rc" -eq 2 ] && [ "$(wc -l < "$TMP/err.txt")" -le 1 ] && grep -q "centerloss\[$extra\]" "$TMP/err.txt" \
        && ! grep -q Traceback "$TMP/err.txt"
}

copy_checkout() {
    mkdir -p "$TMP/src" && tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./runs --exclude=./build \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . \
        | tar -C "$TMP/src" -xf -
}

no_optional_packages() {
    "$V/pip" list 2>/dev/null > "$TMP/pip_list.txt"
    ! grep -iE '^(opencv|matplotlib|scikit-learn|mtcnn|tensorboard|faiss|onnx)' "$TMP/pip_list.txt"
}

torch_unchanged() {
    local now; now=$("$V/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
    echo "torch before: $TORCH_BEFORE, after: $now"
    [ "$now" = "$TORCH_BEFORE" ]
}

core_imports_are_light() {
    "$V/python" -c "
from centerloss import CenterLoss, JointLoss
import centerloss.engine.trainer
import sys
heavy = sorted(m for m in ('cv2', 'matplotlib', 'sklearn', 'tensorboard', 'faiss', 'onnx') if m in sys.modules)
print(heavy)
sys.exit(1 if heavy else 0)"
}

# 4 identities x 6 random 112x96 PNGs, a matching pairs.txt (10 folds x 3+3 unique pairs) and features.
make_synthetic_data() {
    "$V/python" - "$TMP/data" <<'EOF'
import itertools
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
names = [f"person_{k}" for k in range(4)]
for p in names:
    (root / "people" / p).mkdir(parents=True)
    for i in range(1, 7):
        rgb = rng.integers(0, 256, (112, 96, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "people" / p / f"{p}_{i:04d}.png")
r = random.Random(0)
same = r.sample([(p, i, j) for p in names for i, j in itertools.combinations(range(1, 7), 2)], 30)
diff = r.sample([(p, i, q, j) for p, q in itertools.combinations(names, 2) for i in range(1, 7)
                 for j in range(1, 7)], 30)
lines = ["10\t3"]
for f in range(10):
    lines += ["\t".join(map(str, t)) for t in same[3 * f:3 * f + 3] + diff[3 * f:3 * f + 3]]
(root / "pairs.txt").write_text("\n".join(lines) + "\n")
paths = [f"{p}/{p}_{i:04d}.jpg" for p in names for i in range(1, 7)]
np.savez(root / "feats.npz", paths=np.array(paths), features=rng.standard_normal((24, 8)).astype(np.float32))
EOF
}

# verify exits 0 (same) or 1 (different): either is an answer; exit 2, or 1 with an error line, is not.
verify_answers() {
    local rc=0
    "$@" > "$TMP/verify.txt" 2>&1 || rc=$?
    cat "$TMP/verify.txt"
    [ "$rc" -le 1 ] && ! grep -q 'error:' "$TMP/verify.txt"
}

tiny_train() {  # OUT [extra --set items]
    local out=$1; shift
    timeout 600 "$V/centerloss" train --preset lfw_cpu_C --data "$TMP/data/people" --out "$out" --max-steps 3 \
        --workers 0 --set model.kwargs.width=4 data.batch_size=8 "$@" && test -s "$out/model.safetensors"
}

echo "check_install: checkout $SRC, torch==$TORCH, $("$PYTHON" --version 2>&1), temp $TMP"
check "fresh venv" "$PYTHON" -m venv "$TMP/venv" || exit 99
check "pip install torch==$TORCH" timeout 1800 "$V/pip" install "torch==$TORCH"
TORCH_BEFORE=$("$V/python" -c "import torch; print(torch.__version__)" 2>/dev/null)
check "copy the checkout" copy_checkout
check "pip install CHECKOUT (core, no extras)" timeout 900 "$V/pip" install "$TMP/src"
grep -E '^(Requirement already satisfied: torch[^-]|Collecting torch[^-]|.*uninstall.*: torch$)' "$LOG" | sed 's/^/        /'
check "pip list has no opencv/matplotlib/scikit-learn/mtcnn/tensorboard/faiss/onnx" no_optional_packages
check "torch version unchanged" torch_unchanged
check "core imports pull in no cv2/matplotlib/sklearn" core_imports_are_light
check "centerloss --help" "$V/centerloss" --help
check "centerloss train --help" "$V/centerloss" train --help
check "synthetic data (4 identities x 6 PNGs)" make_synthetic_data
check "tiny train, runtime.tensorboard=false" tiny_train "$TMP/run_a" runtime.tensorboard=false
check "tiny train, runtime.tensorboard=true (not installed)" tiny_train "$TMP/run_b"
check "eval lfw --features (no matplotlib)" "$V/centerloss" eval lfw --features "$TMP/data/feats.npz" \
    --pairs "$TMP/data/pairs.txt" --out "$TMP/eval"
M="$TMP/run_a/model.safetensors"
P="$TMP/data/people"
check "verify --aligned (no OpenCV)" verify_answers "$V/centerloss" verify "$P/person_0/person_0_0001.png" \
    "$P/person_1/person_1_0001.png" --model "$M" --threshold 0.5 --aligned --quiet --no-cache
check "embed --aligned (no OpenCV)" "$V/centerloss" embed "$P" --model "$M" --out "$TMP/emb.npz" --aligned \
    --quiet --no-cache
check "gallery build --aligned (no OpenCV)" "$V/centerloss" gallery build "$P" --model "$M" --out "$TMP/gal" \
    --aligned --quiet
check "align: one-line error naming centerloss[align]" one_line_error align \
    "$V/centerloss" align "$P" "$TMP/aligned" --mode test
check "verify (raw photos): one-line error naming centerloss[align]" one_line_error align \
    "$V/centerloss" verify "$P/person_0/person_0_0001.png" "$P/person_1/person_1_0001.png" --model "$M" \
    --threshold 0.5 --quiet --no-cache
check "export: one-line error naming centerloss[onnx]" one_line_error onnx \
    "$V/centerloss" export --model "$M" --out "$TMP/m.onnx"
if [ "$FAILS" -eq 0 ]; then echo "check_install: all checks passed"; else echo "check_install: $FAILS FAILED"; fi
exit "$FAILS"
