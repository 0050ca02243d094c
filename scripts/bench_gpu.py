"""`make bench-gpu`: streetclip's training step against the transformers peer on one GPU, in one
run: `streetclip bench train` and scripts/bench_train_gpu.py (eager and torch.compile) at
micro-batch 64, then StreetCLIP's recipe (32 x 12; streetclip's full_batch against the peer's
per-micro-batch accumulation). Prints a Markdown table with the ratios and writes the raw JSON.

Usage: python3 scripts/bench_gpu.py [--bin target/release/streetclip] [--python .venv/bin/python]
       [--device cuda] [--preset ViT-L/14-336] [--steps 10] [--no-compile] [--out FILE.json]
       [--tiny]   (the demo's tiny model on the CPU: a smoke test of this script)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

p = argparse.ArgumentParser()
p.add_argument("--bin", default="target/release/streetclip")
p.add_argument("--python", default=".venv/bin/python")
p.add_argument("--device", default="cuda")
p.add_argument("--preset", default="ViT-L/14-336")
p.add_argument("--steps", type=int, default=10)
p.add_argument("--no-compile", action="store_true")
p.add_argument("--out", default="bench-gpu.json")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()
here = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def streetclip(micro, accum, mode, steps):
    model = ["--config", os.path.join(here, "../configs/demo.yaml")] if a.tiny else ["--set", f"model.preset={a.preset}"]
    precision = "fp32" if a.device == "cpu" else "bf16"
    cmd = [a.bin, "bench", "train", *model, "--set", f"model.device={a.device}", "--set", f"train.micro_batch_size={micro}",
           "--set", f"train.grad_accum_steps={accum}", "--set", f"train.accumulation={mode}",
           "--set", f"train.precision={precision}", "--set", "optim.lr=1.0e-6", "--set", "optim.max_grad_norm=1.0",
           "--steps", str(steps), "--warmup", "3", "--json"]
    r = run_json(cmd)
    r["run"] = f"streetclip, {micro} x {accum} {mode}"
    return r


def peer(config_file, micro, accum, steps, compile_):
    precision = "fp32" if a.device == "cpu" else "bf16"
    cmd = [a.python, os.path.join(here, "bench_train_gpu.py"), config_file, "--micro", str(micro), "--accum", str(accum),
           "--steps", str(steps), "--warmup", "3", "--device", a.device, "--precision", precision]
    cmd += ["--compile"] if compile_ else []
    r = run_json(cmd)
    r["run"] = f"{r['peer']}, {micro} x {accum} per_micro_batch"
    return r


def gib(b):
    return "-" if b is None else f"{b / 2**30:.1f}"


rows, ratios = [], []
with tempfile.TemporaryDirectory() as tmp:
    for micro, accum, mode, steps in [(64, 1, "per_micro_batch", a.steps), (32, 12, "full_batch", max(2, a.steps // 4))]:
        if a.tiny:
            micro, accum = micro // 8, min(accum, 2)
        ours = streetclip(micro, accum, mode, steps)
        config_file = os.path.join(tmp, "config.json")
        with open(config_file, "w") as f:
            json.dump(ours["model_config"], f)
        # The peer pads every text to the context and runs no first pass.
        flops = 3 * ours["context_flops_per_sample"] / (4 if mode == "full_batch" else 3)
        peers = [peer(config_file, micro, accum, steps, False)]
        if mode == "per_micro_batch" and not a.no_compile:
            peers.append(peer(config_file, micro, accum, steps, True))
        for r in peers:
            r["tflops_per_s"] = r["samples_per_s"] * flops / 1e12
            line = f"{ours['run']} / {r['run']}: {ours['samples_per_s'] / r['samples_per_s']:.2f}x samples/s"
            if ours.get("peak_memory_bytes") and r.get("peak_memory_bytes"):
                line += f", {ours['peak_memory_bytes'] / r['peak_memory_bytes']:.2f}x peak memory"
            ratios.append(line)
        rows += [ours, *peers]

name = rows[0].get("device_name") or a.device
precision = "fp32" if a.device == "cpu" else "bf16 autocast over fp32 weights"
print(f"Training throughput on {name} ({a.preset if not a.tiny else 'demo tiny model'}, {precision})\n")
print("| run | samples/s | TFLOP/s | peak memory (GiB) |")
print("|---|---|---|---|")
for r in rows:
    print(f"| {r['run']} | {r['samples_per_s']:.1f} | {r['tflops_per_s']:.3g} | {gib(r.get('peak_memory_bytes'))} |")
print()
for line in ratios:
    print(line)
with open(a.out, "w") as f:
    json.dump(rows, f, indent=2)
