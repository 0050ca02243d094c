"""The StreetCLIP model card's usage snippet, verbatim apart from where the model, labels and
images come from: prints one JSON list of {image, probabilities} for tests/interop.rs to compare
with `streetclip predict --template "{}" --json`.

Usage: .venv/bin/python scripts/model_card_snippet.py MODEL_DIR LABELS IMAGE...
(LABELS comma-separated.)
"""
import json
import sys

from PIL import Image
from transformers import CLIPModel, CLIPProcessor

model_dir, labels, images = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]

model = CLIPModel.from_pretrained(model_dir)
processor = CLIPProcessor.from_pretrained(model_dir)
# The snippet's numbers are those of the PIL path (torchvision is not installed here).
assert processor.image_processor.backend == "pil", processor.image_processor.backend

results = []
for path in images:
    image = Image.open(path)
    choices = labels
    inputs = processor(text=choices, images=image, return_tensors="pt", padding=True)
    outputs = model(**inputs)
    logits_per_image = outputs.logits_per_image  # this is the image-text similarity score
    probs = logits_per_image.softmax(dim=1)  # we can take the softmax to get the label probabilities
    results.append({"image": path, "probabilities": dict(zip(choices, probs[0].tolist()))})
print(json.dumps(results))
