#!/usr/bin/env python3
"""Run ONAD 0.3.0 on deterministic streams and write the parity fixtures of tests/detect_parity.rs.

Regenerate (5-10 minutes on 2 cores, most of it ONAD's SVM and isolation forest):

    python3 -m venv /tmp/onad-venv
    /tmp/onad-venv/bin/pip install onad==0.3.0      # pulls numpy, scipy, faiss-cpu
    /tmp/onad-venv/bin/python scripts/onad_fixtures.py [--skip-forest] [--groups stats,knn]

It writes tests/fixtures/onad_parity.json (commit it). torch is NOT installed: ONAD's
`onad.base` imports torch for its deep-learning base class even when only classical models are
used (a packaging bug), and PyPI's default torch wheel drags in GBs of CUDA. The models used
here never touch torch, so a stub module named `torch` is put in sys.modules before importing
ONAD (see `_stub_torch`); nothing else of ONAD is changed.

The streams are not stored: both this script and the Rust test generate them from the same
integer generator (splitmix64), turning 53-bit uniforms into approximately standard normal
values as the sum of 12 uniforms minus 6 (Irwin-Hall; variance exactly 1). Only exact IEEE
additions and multiplications by powers of two are involved (no libm), so Python and Rust
produce bit-identical streams; the fixture records a checksum of each stream that the Rust
test verifies first.

Cases (ONAD's API as its docs and the AnomalyDetectionService snippet use it):
- `standard_scaler`, `minmax_scaler`: per point `learn_one(x)` then `transform_one(x)`.
- `pca_*`: IncrementalPCA, per point `learn_one(x)` then `transform_one(x)`; eigenvalues at the end.
- `knn_*`: KNN(k, FaissSimilaritySearchEngine(window_size, warm_up)), per point `score_one(x)`
  then `learn_one(x)`. ONAD computes in float32 (faiss); on the dyadic stream (values are
  multiples of 1/16) every float32 step is exact except the final division by k.
- `scaler_knn`: ONAD's `StandardScaler() | KNN(...)` pipeline, score then learn (ONAD's scaler
  raises on a point before it has learned one, so row 0 is learned only).
- `mahalanobis`, `moving_*`: MovingMahalanobisDistance / MovingAverage / MovingVariance /
  MovingMedian, per point `score_one(x)` then `learn_one(x)` (the univariate ones on 1 feature).
- `auc_*`: prequential ROC-AUC of randomized models, learn-then-score (the snippet's order),
  AUC over the points after the first 2,048, raw scores.
"""

import argparse
import json
import math
import struct
import sys
import time
import types
from pathlib import Path

MASK = (1 << 64) - 1


def _stub_torch():
    """Register a minimal `torch` so that `import onad...` works without the real package."""
    torch = types.ModuleType("torch")
    nn = types.ModuleType("torch.nn")
    optim = types.ModuleType("torch.optim")

    class Module:  # stand-in base class of onad.base.architecture.Architecture
        pass

    class device:  # used in annotations only
        def __init__(self, *args, **kwargs):
            pass

    class Tensor:  # used in annotations only
        pass

    nn.Module = Module
    torch.nn = nn
    torch.optim = optim
    torch.device = device
    torch.Tensor = Tensor
    sys.modules["torch"] = torch
    sys.modules["torch.nn"] = nn
    sys.modules["torch.optim"] = optim


class Stream:
    """splitmix64 -> 53-bit uniforms -> Irwin-Hall(12) - 6 normals. Mirrored in the Rust test."""

    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def normal(self):
        s = 0.0
        for _ in range(12):
            s += self.uniform()
        return s - 6.0


def gaussian_stream(seed, n, dim, shift=0.0, outlier_every=0, one_feature=False):
    """n rows of dim normals; with outlier_every > 0, a row is an outlier when next_u64() % 100
    == 0 (1%), shifted by `shift` on all features or (one_feature) on one drawn feature."""
    g = Stream(seed)
    rows, labels = [], []
    for _ in range(n):
        row = [g.normal() for _ in range(dim)]
        label = 0
        if outlier_every:
            pick = g.next_u64()
            feature = g.next_u64() % dim
            if pick % outlier_every == 0:
                label = 1
                if one_feature:
                    row[feature] += shift
                else:
                    row = [v + shift for v in row]
        rows.append(row)
        labels.append(label)
    return rows, labels


def mixed_stream(seed, n):
    """6 features: a normal, a scaled+offset normal, a constant, a feature that is constant for
    the first 100 rows then varies, and two correlated through a shared latent factor."""
    g = Stream(seed)
    rows = []
    for i in range(n):
        a, b, c, d, e = (g.normal() for _ in range(5))
        rows.append([a, 50.0 + 8.0 * b, 3.0, 0.0 if i < 100 else c, 2.0 * e + 0.5 * d, 2.0 * e - 0.5 * d])
    return rows


def latent_stream(seed, n):
    """6 features from 3 latent factors with variances 9, 4, 1 plus small noise (well separated
    eigenvalues, so the principal directions are well defined)."""
    g = Stream(seed)
    loadings = [
        [0.5, 0.5, 0.5, 0.5, 0.0, 0.0],
        [0.5, -0.5, 0.0, 0.0, 0.5, -0.5],
        [0.0, 0.0, 0.5, -0.5, 0.5, 0.5],
    ]
    scales = [3.0, 2.0, 1.0]
    rows = []
    for _ in range(n):
        f = [s * g.normal() for s in scales]
        noise = [0.125 * g.normal() for _ in range(6)]
        rows.append([sum(f[k] * loadings[k][j] for k in range(3)) + noise[j] + 1.0 for j in range(6)])
    return rows


def dyadic(rows):
    """Round to multiples of 1/16 (floor(16x + 0.5) / 16: same in Python and Rust)."""
    return [[math.floor(v * 16.0 + 0.5) / 16.0 for v in row] for row in rows]


def checksum(rows):
    """Plain sum of every value in row order (exactly reproducible)."""
    s = 0.0
    for row in rows:
        for v in row:
            s += v
    return s


def add_checksum_bits(fixture):
    """The checksum's IEEE bits as an integer: JSON float parsers need not round-trip the last
    bit (serde_json's default parser does not), integers are exact."""
    for case in fixture["cases"].values():
        case["checksum_bits"] = struct.unpack("<Q", struct.pack("<d", case["checksum"]))[0]


def as_dicts(rows):
    # Zero-padded names keep ONAD's sorted() key order equal to column order.
    return [{f"f{j:02d}": v for j, v in enumerate(row)} for row in rows]


def roc_auc(scores, labels):
    """Rank-based ROC-AUC with average ranks for ties (Mann-Whitney U)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    pos = sum(labels)
    neg = len(labels) - pos
    rank_sum = sum(r for r, l in zip(ranks, labels) if l)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/onad_parity.json"))
    parser.add_argument("--skip-forest", action="store_true", help="leave out ONAD's (slow) isolation forest AUC")
    parser.add_argument("--auc-points", type=int, default=20000)
    parser.add_argument("--forest-points", type=int, default=6000)
    parser.add_argument(
        "--groups",
        default="transforms,knn,stats,auc",
        help="comma-separated case groups to (re)generate; the others are kept from an existing --out file",
    )
    args = parser.parse_args()
    groups = set(args.groups.split(","))

    _stub_torch()
    import numpy as np
    import onad
    from onad.model.distance.knn import KNN
    from onad.model.svm.adaptive import IncrementalOneClassSVMAdaptiveKernel
    from onad.transform.preprocessing.scaler import MinMaxScaler, StandardScaler
    from onad.transform.projection.incremental_pca import IncrementalPCA
    from onad.utils.similar.faiss_engine import FaissSimilaritySearchEngine

    version = getattr(onad, "__version__", None)
    if version is None:
        from importlib.metadata import version as pkg_version

        version = pkg_version("onad")
    fixture = {"onad_version": version, "generator": "splitmix64 / Irwin-Hall(12) - 6, see scripts/onad_fixtures.py", "cases": {}}
    if Path(args.out).exists() and groups != {"transforms", "knn", "stats", "auc"}:
        fixture["cases"] = json.loads(Path(args.out).read_text())["cases"]
    cases = fixture["cases"]

    def transform_case(name, rows, make, stream_desc):
        t = make()
        outs = []
        for x in as_dicts(rows):
            t.learn_one(x)
            outs.append(list(t.transform_one(x).values()))
        cases[name] = {"stream": stream_desc, "checksum": checksum(rows), "outputs": outs}
        return t

    if "transforms" in groups:
        transform_cases(transform_case, IncrementalPCA, MinMaxScaler, StandardScaler, cases, np)
    if "knn" in groups:
        knn_cases(cases, KNN, FaissSimilaritySearchEngine, StandardScaler)
    if "stats" in groups:
        stats_cases(cases)
    if "auc" in groups:
        auc_cases(cases, args, np, KNN, FaissSimilaritySearchEngine, IncrementalOneClassSVMAdaptiveKernel)

    add_checksum_bits(fixture)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)


def transform_cases(transform_case, IncrementalPCA, MinMaxScaler, StandardScaler, cases, np):
    mixed = mixed_stream(11, 400)
    mixed_desc = {"kind": "mixed", "seed": 11, "n": 400}
    transform_case("standard_scaler", mixed, StandardScaler, mixed_desc)
    transform_case("minmax_scaler", mixed, MinMaxScaler, mixed_desc)

    latent = latent_stream(12, 500)
    latent_desc = {"kind": "latent", "seed": 12, "n": 500}
    for name, params in [
        ("pca_stationary", {"n_components": 3, "n0": 50}),
        ("pca_forgetting", {"n_components": 2, "n0": 30, "forgetting_factor": 0.02}),
    ]:
        t = transform_case(name, latent, lambda: IncrementalPCA(**params), latent_desc)
        cases[name]["params"] = params
        cases[name]["eigenvalues"] = [float(v) for v in np.real(t.values)]


def knn_cases(cases, KNN, FaissSimilaritySearchEngine, StandardScaler):
    def knn_case(name, rows, k, window_size, warm_up, desc, scaler=False):
        model = KNN(k, FaissSimilaritySearchEngine(window_size=window_size, warm_up=warm_up))
        if scaler:
            model = StandardScaler() | model
        scores = []
        dicts = as_dicts(rows)
        if scaler:
            # ONAD's scaler cannot transform before it has learned anything: the first point
            # is learned only, scores start at the second (`scores[i]` is row i + 1's).
            model.learn_one(dicts[0])
            dicts = dicts[1:]
        for x in dicts:
            scores.append(float(model.score_one(x)))
            model.learn_one(x)
        cases[name] = {
            "first_scored_row": 1 if scaler else 0,
            "stream": desc,
            "checksum": checksum(rows),
            "params": {"k": k, "window_size": window_size, "warm_up": warm_up},
            "scores": scores,
        }

    rows, _ = gaussian_stream(21, 1500, 5, shift=6.0, outlier_every=100)
    rows = dyadic(rows)
    knn_case("knn_dyadic", rows, 10, 200, 10, {"kind": "gaussian", "seed": 21, "n": 1500, "dim": 5, "shift": 6.0, "one_feature": False, "dyadic": True})
    rows, _ = gaussian_stream(22, 1200, 8, shift=6.0, outlier_every=100)
    knn_case("knn_float", rows, 7, 150, 20, {"kind": "gaussian", "seed": 22, "n": 1200, "dim": 8, "shift": 6.0, "one_feature": False, "dyadic": False})
    rows, _ = gaussian_stream(23, 800, 4, shift=6.0, outlier_every=100)
    knn_case("scaler_knn", rows, 5, 100, 5, {"kind": "gaussian", "seed": 23, "n": 800, "dim": 4, "shift": 6.0, "one_feature": False, "dyadic": False}, scaler=True)


def stats_cases(cases):
    """ONAD's moving statistics, score then learn; the univariate ones on one feature."""
    from onad.model.stat.multi import MovingMahalanobisDistance
    from onad.model.stat.uni import MovingAverage, MovingMedian, MovingVariance

    def stat_case(name, rows, model, desc, params):
        scores = []
        for x in as_dicts(rows):
            scores.append(float(model.score_one(x)))
            model.learn_one(x)
        cases[name] = {"stream": desc, "checksum": checksum(rows), "params": params, "scores": scores}

    desc = {"kind": "gaussian", "seed": 24, "n": 600, "dim": 5, "shift": 6.0, "one_feature": True, "dyadic": False}
    rows, _ = gaussian_stream(24, 600, 5, shift=6.0, outlier_every=100, one_feature=True)
    stat_case("mahalanobis", rows, MovingMahalanobisDistance(window_size=60), desc, {"window_size": 60})
    desc = {"kind": "gaussian", "seed": 25, "n": 600, "dim": 1, "shift": 6.0, "one_feature": False, "dyadic": False}
    rows, _ = gaussian_stream(25, 600, 1, shift=6.0, outlier_every=100)
    for name, cls in [("moving_average", MovingAverage), ("moving_variance", MovingVariance), ("moving_median", MovingMedian)]:
        stat_case(name, rows, cls(window_size=25), desc, {"window_size": 25})


def auc_cases(cases, args, np, KNN, FaissSimilaritySearchEngine, IncrementalOneClassSVMAdaptiveKernel):
    def auc_case(name, make, rows, labels, desc, skip=2048):
        model = make()
        scores = []
        start = time.time()
        for x in as_dicts(rows):
            model.learn_one(x)
            scores.append(float(model.score_one(x)))
        elapsed = time.time() - start
        auc = roc_auc(scores[skip:], labels[skip:])
        cases[name] = {
            "stream": desc,
            "checksum": checksum(rows),
            "protocol": "learn_one then score_one; ROC-AUC of raw scores after the first 2048 points",
            "skip": skip,
            "auc": auc,
            "points_per_second": len(rows) / elapsed,
        }
        print(f"{name}: AUC {auc:.4f}, {len(rows) / elapsed:.0f} points/s", file=sys.stderr)

    n = args.auc_points
    for tag, one in [("a", False), ("b", True)]:
        seed = 31 if tag == "a" else 32
        rows, labels = gaussian_stream(seed, n, 10, shift=6.0, outlier_every=100, one_feature=one)
        desc = {"kind": "gaussian", "seed": seed, "n": n, "dim": 10, "shift": 6.0, "one_feature": one, "dyadic": False}
        auc_case(f"auc_svm_{tag}", lambda: IncrementalOneClassSVMAdaptiveKernel(seed=0), rows, labels, desc)
        auc_case(f"auc_knn_{tag}", lambda: KNN(10, FaissSimilaritySearchEngine(window_size=1000, warm_up=10)), rows, labels, desc)
        if not args.skip_forest:
            from onad.model.iforest.online import OnlineIsolationForest

            np.random.seed(0)
            m = args.forest_points
            fdesc = dict(desc, n=m)
            auc_case(f"auc_forest_{tag}", OnlineIsolationForest, rows[:m], labels[:m], fdesc)


if __name__ == "__main__":
    main()
