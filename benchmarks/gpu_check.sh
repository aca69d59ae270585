#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see docs/benchmarks.md): GPU-path tests and the
# ingest benchmark with ViT-B-16 (random weights: speed only). Not part of CI.
# Expects wheels for what the machine lacks in .whl/ (open_clip_torch, ftfy, wcwidth,
# duckdb, faiss-cpu; python 3.12) and writes results under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 BIOINDEX_CACHE_DIR=/tmp/bic
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, faiss, duckdb, open_clip; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'faiss', faiss.__version__)" | tee -a "$OUT/gpu.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_indexing.py tests/test_store.py \
  -k "not kill" 2>&1 | tail -4 | tee "$OUT/tests.txt"
# 224 px: 4,000 drawn JPEGs hard-linked 15x = 60,000 files, enough for a steady state at
# >10,000 images/s (3,000 files were over before 16 workers had delivered a batch each).
bench() {  # bench NAME ARGS...: one ingest benchmark, its table in $OUT/NAME.txt
  local name=$1; shift
  timeout 170 python3 benchmarks/ingest.py --model ViT-B-16 --checkpoint random --device cuda \
    --no-baseline --rounds 1 --workdir /tmp/bench --out "$OUT/$name.json" "$@" 2>&1 | tail -14 \
    | tee "$OUT/$name.txt"
}
bench ingest-vitb16-224 --images 4000 --repeat 15 --size 224
bench ingest-vitb16-1024 --images 500 --repeat 10 --size 1024 --fast-decode
bench ingest-vitb16-224-compile --images 4000 --repeat 15 --size 224 --compile
bench ingest-vitb16-224-cpu-decode --images 4000 --repeat 15 --size 224 --no-gpu-decode
