"""Python reference for benches/eval_geo.rs: the same hierarchical zero-shot procedure with
transformers (CLIPModel, CLIPTokenizer, CLIPImageProcessor/PIL) on the same model, gazetteer,
prompts and images: country among all gazetteer countries with a city, then the city among
the country's 30 most populous. Prints images/s and each image's guessed country and city.

Usage: .venv/bin/python scripts/bench_geo.py MODEL_DIR GAZETTEER_DIR BATCH THREADS IMAGE...

With BENCH_GEO_WARM=1 the images are first geolocated once untimed and the clock covers only a
second pass (a service's steady state: model loaded, candidate texts embedded), and with
BATCH 1 that is the procedure called once per request.
"""
import os
import csv
import math
import sys
import time

import torch
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

model_dir, gaz, batch, threads, images = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
torch.set_num_threads(threads)


def tsv(name):
    with open(f"{gaz}/{name}", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


start = time.perf_counter()
model = CLIPModel.from_pretrained(model_dir).eval()
tok = CLIPTokenizer.from_pretrained("assets/tokenizer")
size = model.config.vision_config.image_size
proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
countries = tsv("countries.tsv")
regions = {r["code"]: r["name"] for r in tsv("admin1.tsv")}
cities = tsv("cities.tsv")
by_country = {}
for c in cities:
    by_country.setdefault(c["country"], []).append(c)
for lst in by_country.values():
    lst.sort(key=lambda c: -int(c["population"]))
cands = [c for c in countries if not math.isnan(float(c["lat"])) and c["iso2"] in by_country]


def sentence(c):
    return ("the " if c["article"] == "1" else "") + c["name"]


@torch.no_grad()
def text(prompts):
    enc = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    f = model.get_text_features(**enc).pooler_output
    return f / f.norm(dim=-1, keepdim=True)


country_text = text([f"A Street View photo in {sentence(c)}." for c in cands])
city_text = {}
scale = model.logit_scale.exp()


@torch.no_grad()
def geolocate():
    out = []
    for i in range(0, len(images), batch):
        pix = proc(images=[Image.open(p) for p in images[i : i + batch]], return_tensors="pt")["pixel_values"]
        f = model.get_image_features(pixel_values=pix).pooler_output
        f = f / f.norm(dim=-1, keepdim=True)
        for row in f:
            c = cands[int((scale * row @ country_text.T).softmax(-1).argmax())]
            top = by_country[c["iso2"]][:30]
            if c["iso2"] not in city_text:
                names = [f"A Street View photo from {x['name']}, {regions.get(x['admin1'], '')}, {sentence(c)}.".replace(", ,", ",") for x in top]
                city_text[c["iso2"]] = text(names)
            city = top[int((scale * row @ city_text[c["iso2"]].T).softmax(-1).argmax())]
            out.append((c["iso2"], city["name"]))
    return out


if os.environ.get("BENCH_GEO_WARM") == "1":
    geolocate()
    start = time.perf_counter()
out = geolocate()
elapsed = time.perf_counter() - start
print(f"images_per_s {len(images) / elapsed:.2f}")
for iso, city in out:
    print(f"guess\t{iso}\t{city}")
