#!/usr/bin/env bash
# One GPU check of ps_jax on a machine with one NVIDIA GPU, in three steps:
#   1. the GPU-relevant tests (layers, both towers, the Prompt Switch model, bfloat16
#      and the fast paths, the train step, sharding);
#   2. bench_train.py, ViT-B/32, 12 frames, bfloat16 compute, cuDNN attention
#      (jax.nn.dot_product_attention), every layer unrolled, at the batch that fills the
#      device (--batch 0: XLA's memory plan), with its MFU against a matmul timed in
#      the same run;
#   3. the same step against the PyTorch reference (transformers' CLIPModel, float32
#      and torch.autocast(bfloat16), fused AdamW) at a batch both frameworks fit.
# It ends with the goal line: MFU >= 45% and >= 4x the PyTorch float32 step.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--out DIR] [--batch N] [--dry]
#
# --wheels DIR: install the wheels there first (pip --no-index --target; for a GPU
#   image that has jax, flax, optax, torch and transformers but not grain,
#   tensorflow-datasets or ml_collections: `pip download` them where pip has a network).
#   Without it, missing packages are named and the script stops.
# --out DIR: where the logs and tables go (default gpu_check_out).
# --batch N: the batch of step 3 (default 32).
# --dry: the same steps on the CPU at the smallest size (tests collected, not run; a
#   tiny model; one round): shows the script starts and every command is well formed.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
WHEELS=""
OUT_DIR="gpu_check_out"
REF_BATCH=32
PY="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --batch) REF_BATCH="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT_DIR"

if [ -n "$WHEELS" ]; then
  site="${TMPDIR:-/tmp}/ps_jax_gpu_site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" \
    "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

"$PY" - <<'EOF'
import importlib, sys
need = ["jax", "flax", "optax", "orbax.checkpoint", "grain", "tensorflow_datasets",
        "ml_collections", "numpy", "torch", "transformers", "pytest", "safetensors"]
missing = []
for name in need:
  try:
    importlib.import_module(name)
  except Exception as e:  # an import that fails for any reason counts as missing
    missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
  sys.exit("gpu_check.sh: missing Python packages: " + "; ".join(missing)
           + "\n  install them (pip install -e '.[test]') or pass --wheels DIR")
EOF

if [ "$DRY" = 1 ]; then
  export JAX_PLATFORMS=cpu
  MODEL=tiny; FRAMES=6; FILL=(--batch 0 --max_batch 16); REF=(--batch 2)
  TIMING=(--rounds 1 --steps 1 --xla_count off --matmul_size 256)
  PYTEST=(--collect-only -q)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
  MODEL=vitb32; FRAMES=12; FILL=(--batch 0); REF=(--batch "$REF_BATCH")
  TIMING=(--rounds 3 --steps 5)
  PYTEST=(-q -x)
fi

echo "== 1. GPU-relevant tests"
"$PY" -m pytest "${PYTEST[@]}" tests/test_layers.py tests/test_clip.py \
  tests/test_prompt_switch.py tests/test_fast_paths.py tests/test_optim.py \
  tests/test_train.py 2>&1 | tee "$OUT_DIR/tests.log"

echo "== 2. ps_jax at the batch that fills the device"
"$PY" benchmarks/bench_train.py --model "$MODEL" --frames "$FRAMES" "${FILL[@]}" \
  --num_prompts 6 --dtype bfloat16 --attention_impl dot_product_attention --scan_unroll 0 \
  --sweep none --no-eval "${TIMING[@]}" \
  | tee "$OUT_DIR/fill.md"

echo "== 3. ps_jax against the PyTorch reference at one batch"
XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" benchmarks/bench_train.py --model "$MODEL" \
  --frames "$FRAMES" "${REF[@]}" --num_prompts 6 --dtype bfloat16 \
  --attention_impl dot_product_attention --scan_unroll 0 --sweep none --plain_clip \
  --torch --torch_autocast --torch_adamw fused --no-eval "${TIMING[@]}" \
  | tee "$OUT_DIR/vs_torch.md"

"$PY" - "$OUT_DIR" <<'EOF'
import re, sys
out = sys.argv[1]

def rows(path):
  """Rows of the '### Train step' table of a bench_train output, as {header: cell}."""
  lines = open(path, encoding="utf-8").read().splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith("### Train step"))
  table = [l for l in lines[start:] if l.startswith("|")]
  head = [c.strip() for c in table[0].strip("|").split("|")]
  return [dict(zip(head, [c.strip() for c in l.strip("|").split("|")])) for l in table[2:]]

num = lambda cell: float(re.match(r"[-+]?[\d.]+", cell).group())
fill = rows(f"{out}/fill.md")[0]
vs = rows(f"{out}/vs_torch.md")
mine = vs[0]
mfu = num(fill["MFU"])
speedup = num(mine["ps_jax / PyTorch"])
print(f"\nbatch-filling step ({fill['variant']}): {fill['videos/s']} videos/s, MFU {mfu:.1f}%")
print(f"vs PyTorch float32 at the common batch: {speedup:.2f}x ({mine['videos/s']} videos/s)")
print(f"goal (MFU >= 45%, >= 4x PyTorch float32): "
      f"{'met' if mfu >= 45 and speedup >= 4 else 'NOT met'}")
EOF
