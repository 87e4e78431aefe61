#!/usr/bin/env python3
"""A clean sensor fleet as CSV for `onad-stream score`: the calibration's promise is measured
on it (BENCHMARKS.md, "Calibration").

Usage: benches/clean_fleet.py [SENSORS] [READINGS_PER_SENSOR] [FEATURES] [SEED] > clean.csv

Columns: sensor, f0..f{FEATURES-1} (independent N(0, 1), Python's seeded Mersenne Twister),
label (always 0). Sensors take turns, as readings of a fleet would interleave in a topic.
Defaults: 10 sensors x 10,000 readings x 4 features, seed 1 (the issue's clean fleet).
"""
import random
import sys

sensors, readings, features, seed = (int(a) for a in (sys.argv[1:] + ["10", "10000", "4", "1"][len(sys.argv) - 1:]))
rng = random.Random(seed)
out = sys.stdout
out.write("sensor," + ",".join(f"f{i}" for i in range(features)) + ",label\n")
for _ in range(readings):
    for s in range(sensors):
        out.write(f"s{s}," + ",".join(repr(rng.gauss(0.0, 1.0)) for _ in range(features)) + ",0\n")
