# streetclip: `make demo` runs the main job on shipped data; `make test` is what CI runs.
.PHONY: setup build test demo fixtures bench clean

CARGO ?= cargo

setup:
	@./scripts/setup.sh

build: setup
	$(CARGO) build --release

test: setup
	$(CARGO) test -- --test-threads 2
	$(CARGO) check --benches

# Until the trainer lands, the demo ranks captions for the shipped photos with the tiny fixture model.
demo: build
	./target/release/streetclip predict --model tests/fixtures/tiny-p14-336 \
		--labels "a cup of coffee,a cat,a rocket launch,a street in Paris" \
		--template "a photo of {}." assets/demo/coffee.jpg assets/demo/chelsea.jpg assets/demo/rocket.jpg

# Regenerates the committed parity fixtures and the tokenizer files from the reference stack.
fixtures: setup
	.venv/bin/python scripts/make_tokenizer.py assets/tokenizer
	.venv/bin/python scripts/make_fixtures.py

bench: setup
	$(CARGO) bench --bench embed_throughput --bench loader_throughput --bench reverse_geocode

clean:
	$(CARGO) clean
