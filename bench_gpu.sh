#!/usr/bin/env bash
# One GPU, a few minutes: training throughput of model.py vs transformers' GPT2LMHeadModel for the
# GPT-2 124M and 350M shapes (bf16 autocast, flash attention through SDPA, eager and torch.compile).
#   bash bench_gpu.sh 2>&1 | tee bench_gpu.log
# Works offline; without transformers installed it times model.py alone. Most of the time is compilation.
# Last, a short train.py check of the GPU-only paths (bf16, compile, fused AdamW, checkpoint + resume).
set -uo pipefail
cd "$(dirname "$0")"
python -c "import configurator; configurator.check_device('cuda')" 2>/dev/null || {
  echo "error: bench_gpu.sh needs a CUDA GPU and a CUDA build of torch; on a CPU run python bench.py" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
common=(--device=cuda --dtype=bfloat16 --block_size=1024 --vocab_size=50304 --modes=eager,compile
        --steps=10 --rounds=3 --warmup=3)
status=0
echo; echo "== GPT-2 124M: 12 layers, 12 heads, 768 wide, T=1024, B=16 =="
python bench.py "${common[@]}" --n_layer=12 --n_head=12 --n_embd=768 --batch_size=16 || status=1
echo; echo "== GPT-2 350M: 24 layers, 16 heads, 1024 wide, T=1024, B=8 =="
python bench.py "${common[@]}" --n_layer=24 --n_head=16 --n_embd=1024 --batch_size=8 || status=1

echo; echo "== train.py on the GPU: a tiny char model, bf16 + compile, 30 iters, then resume to 40 =="
out=$(mktemp -d)
smoke=(config/train_shakespeare_char.py --device=cuda --compile=True --dtype=auto --out_dir="$out"
       --n_layer=2 --n_head=2 --n_embd=64 --eval_interval=10 --eval_iters=5 --log_interval=10)
{ [ -f data/shakespeare_char/meta.json ] || python data/shakespeare/prepare.py; } &&
  python train.py "${smoke[@]}" --max_iters=30 | grep -E "^iter|error|saved" &&
  python train.py "${smoke[@]}" --max_iters=40 --init_from=resume | grep -E "^iter|error|saved" &&
  echo "train.py GPU check: OK" || { echo "train.py GPU check: FAILED"; status=1; }
rm -rf "$out"
exit $status
