"""Reads a run's TensorBoard event files with TensorBoard's own reader and prints, as JSON,
every scalar tag with its (step, value) pairs.

Usage: .venv/bin/python scripts/read_tensorboard.py RUN_DIR/tensorboard
"""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
