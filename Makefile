# streetclip: `make demo` runs the main job on shipped data; `make test` is what CI runs.
.PHONY: setup build install test demo finetune-demo finetune-geocells-demo fixtures bench bench-gpu clean

CARGO ?= cargo

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build --release

# Puts `streetclip` on PATH. The binary loads libtorch from this clone's .venv (its rpath), so
# keep the clone; `make install PREFIX=/usr/local` for a system-wide copy.
PREFIX ?= $(HOME)/.local
install: build
	install -d $(PREFIX)/bin
	install -m 755 target/release/streetclip $(PREFIX)/bin/streetclip
	@echo "installed $(PREFIX)/bin/streetclip (libtorch: $(CURDIR)/.venv/libtorch/lib)"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "note: $(PREFIX)/bin is not on your PATH; add it, e.g. export PATH=\"$(PREFIX)/bin:\$$PATH\"";; esac

# The benchmarks are built, not run (`make bench` runs them): `build` in the dev profile reuses the
# dependencies `cargo test` compiled (seconds), where `check` would re-check them all (~5 min).
test: setup
	$(CARGO) fmt --check
	$(CARGO) test -- --test-threads 2
	$(CARGO) build --benches

# The main job on shipped data: train a tiny CLIP from scratch on synthetic street scenes of 10
# countries (drawn into .cache/ the first time), then show what it learned: zero-shot country
# accuracy on held-out scenes against chance, and the exported model geolocating two scenes.
demo: build
	rm -rf runs/demo
	./target/release/streetclip train --config configs/demo.yaml --out runs/demo > runs-demo-summary.json.tmp || (rm -f runs-demo-summary.json.tmp; exit 1)
	mv runs-demo-summary.json.tmp runs/demo/train-output.json
	@echo
	@.venv/bin/python -c "import json; v=json.load(open('runs/demo/summary.json'))['validation']; print(f\"learned: zero-shot country accuracy {v['country_accuracy']:.1%} on {v['samples']} held-out scenes (chance {v['country_chance']:.1%}, {v['countries']} countries)\")"
	@./target/release/streetclip predict --model runs/demo/export --top-k 3 \
		--labels "$$(./target/release/streetclip captions --manifest .cache/synth-demo/manifest.csv --json 2>/dev/null | .venv/bin/python -c 'import json,sys; print(",".join(sorted({r["country"] for r in json.load(sys.stdin)})))')" \
		.cache/synth-demo/images/GB_2643743_019.jpg .cache/synth-demo/images/JP_1850147_019.jpg

# Downstream fine-tuning on the demo's scenes from the demo's model (run `make demo` first):
# zero-shot, linear probe, contrastive and classifier-head methods compared on one test split.
finetune-demo: build
	@test -d runs/demo/export || { echo "run 'make demo' first: it trains runs/demo/export"; exit 1; }
	rm -rf runs/finetune-demo
	./target/release/streetclip finetune --config configs/finetune/demo-country.yaml --out runs/finetune-demo

# Geolocation by geocells on the demo's scenes from the demo's model (run `make demo` first),
# then the test split scored by the zero-shot demo model and the geocell export side by side.
finetune-geocells-demo: build
	@test -d runs/demo/export || { echo "run 'make demo' first: it trains runs/demo/export"; exit 1; }
	rm -rf runs/finetune-geocells
	./target/release/streetclip finetune --config configs/finetune/demo-geocells.yaml --out runs/finetune-geocells
	./target/release/streetclip eval geo --config configs/finetune/demo-geocells.yaml --model runs/demo/export --model runs/finetune-geocells/geocells/export --manifest runs/finetune-geocells/geocells/test.csv --out runs/finetune-geocells/vs-zero-shot > /dev/null
	@sed -n '5,16p' runs/finetune-geocells/vs-zero-shot/report.md

# Regenerates the committed parity fixtures and the tokenizer files from the reference stack.
fixtures: setup
	.venv/bin/python scripts/make_tokenizer.py assets/tokenizer
	.venv/bin/python scripts/make_fixtures.py

bench: setup
	$(CARGO) bench --bench embed_throughput --bench loader_throughput --bench reverse_geocode --bench train_throughput --bench eval_geo --bench geocells

# On a GPU machine: `streetclip bench train` beside transformers' CLIPModel (eager and
# torch.compile) on ViT-L/14-336 at micro-batch 64, then StreetCLIP's 32 x 12 recipe; prints
# the table and ratios (docs/performance.md). Elsewhere: BENCH_GPU_ARGS="--device cpu --tiny".
bench-gpu: build
	.venv/bin/python scripts/bench_gpu.py $(BENCH_GPU_ARGS)

clean:
	$(CARGO) clean
