#!/bin/bash
# Training throughput and peak RSS at a realistic size on the CPU: streetclip's `bench train`
# (full_batch and per_micro_batch) alternating with transformers' CLIPModel doing the same steps
# (scripts/bench_train_gpu.py --device cpu), in one run, and the ratios.
# Usage: scripts/bench_train_cpu.sh [PRESET] [MICRO] [ROUNDS]   (after `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-ViT-B/32} micro=${2:-16} rounds=${3:-2}
bin=target/release/streetclip py=.venv/bin/python tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common=(--set "model.preset=$preset" --set "train.micro_batch_size=$micro" --set train.grad_accum_steps=1
        --set train.precision=fp32 --steps 5 --warmup 2 --json)
field() { "$py" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
"$bin" bench train "${common[@]}" > "$tmp/first.json"
"$py" -c "import json,sys; json.dump(json.load(open(sys.argv[1]))['model_config'], open(sys.argv[2],'w'))" "$tmp/first.json" "$tmp/config.json"
for round in $(seq "$rounds"); do
  for mode in full_batch per_micro_batch; do
    "$bin" bench train "${common[@]}" --set "train.accumulation=$mode" > "$tmp/$mode.json"
  done
  /usr/bin/time -f %M -o "$tmp/peer_rss" "$py" scripts/bench_train_gpu.py "$tmp/config.json" \
    --micro "$micro" --steps 5 --warmup 2 --device cpu --precision fp32 > "$tmp/peer.json"
  peer=$(field "$tmp/peer.json" samples_per_s) peer_rss=$(($(tail -1 "$tmp/peer_rss") * 1024))
  for mode in full_batch per_micro_batch; do
    ours=$(field "$tmp/$mode.json" samples_per_s) rss=$(field "$tmp/$mode.json" peak_rss_bytes)
    "$py" -c "import sys; o,p,r,pr=map(float,sys.argv[2:]); print(f'round {sys.argv[1]}: {o:.2f} vs {p:.2f} samples/s = {o/p:.2f}x, peak RSS {r/2**20:.0f} vs {pr/2**20:.0f} MiB = {r/pr:.2f}x')" \
      "$round $mode" "$ours" "$peer" "$rss" "$peer_rss"
  done
done
