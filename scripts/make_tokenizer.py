"""Derive the Hugging Face CLIP tokenizer files from OpenAI's BPE vocabulary.

The source is `bpe_simple_vocab_16e6.txt.gz` (MIT, OpenAI) as shipped in the open-clip-torch
wheel. We slice it exactly as OpenAI's `SimpleTokenizer` does (48,894 merges; 49,408 ids), write
`vocab.json` + `merges.txt`, and let transformers' own `CLIPTokenizer` turn them into
`tokenizer.json` so the result is what `CLIPTokenizer.from_pretrained` would produce.

Usage: .venv/bin/python scripts/make_tokenizer.py assets/tokenizer
"""
import gzip
import json
import os
import sys
import tempfile

import importlib.util

from transformers import CLIPTokenizer


def bytes_to_unicode():
    # GPT-2's reversible byte -> printable unicode table, as in OpenAI CLIP's tokenizer.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main(out_dir):
    # Importing open_clip would need torchvision; we only need the file inside its package.
    pkg = importlib.util.find_spec("open_clip").submodule_search_locations[0]
    bpe = os.path.join(pkg, "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)

    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            f.write("\n".join(" ".join(m) for m in merges) + "\n")
        tok = CLIPTokenizer.from_pretrained(
            tmp,
            model_max_length=77,
            bos_token="<|startoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            pad_token="<|endoftext|>",
        )
        assert len(tok) == 49408, len(tok)
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)
        # Drop the loading context transformers records; it describes this run, not the tokenizer.
        cfg_path = os.path.join(out_dir, "tokenizer_config.json")
        with open(cfg_path) as f:
            cfg = json.load(f)
        for key in ("is_local", "local_files_only"):
            cfg.pop(key, None)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        # Keep vocab.json/merges.txt too: some consumers (and our own fallback path) want them.
        for name in ("vocab.json", "merges.txt"):
            with open(os.path.join(tmp, name), "rb") as src, open(os.path.join(out_dir, name), "wb") as dst:
                dst.write(src.read())
    ids = tok("A Street View photo in Paris, Ile-de-France, France.")["input_ids"]
    print(f"wrote {out_dir}: {sorted(os.listdir(out_dir))}; sample ids {ids}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "assets/tokenizer")
