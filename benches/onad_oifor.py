"""Run ONAD 0.3.0's OnlineIsolationForest on the quality benchmark's streams.

The reference side of the forest's quality comparison: same streams, same protocol as
`benches/quality.rs` (learn, then score each point; ROC-AUC / PR-AUC after the first 2,048).

    cargo bench --bench quality  # with QUALITY_DUMP_DIR=/tmp/streams to write the CSVs
    python benches/onad_oifor.py /tmp/streams/b_shift_one.csv [more.csv ...]

Needs a Python with `onad==0.3.0` (numpy, scipy). ONAD's package imports torch for its deep
models although the forest never uses it; this script puts a stub `torch` module on the
path instead of installing torch (GBs with CUDA), so only the forest can be used with it.
Prints one line per stream: points, ROC-AUC, PR-AUC, points/s, or where ONAD crashed.
"""

import sys
import time
import types

import numpy as np

# Stub torch: onad.base.architecture subclasses torch.nn.Module at import time.
torch = types.ModuleType("torch")
torch.nn = types.ModuleType("torch.nn")
torch.nn.Module = type("Module", (), {})
torch.device = type("device", (), {})
torch.Tensor = type("Tensor", (), {})
sys.modules["torch"] = torch
sys.modules["torch.nn"] = torch.nn

from onad.model.iforest.online import OnlineIsolationForest  # noqa: E402

SKIP = 2048


def roc_auc(scores, labels):
    """Mann-Whitney U with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    pos = labels[order]
    p, n = pos.sum(), len(pos) - pos.sum()
    return (ranks[pos].sum() - p * (p + 1) / 2) / (p * n)


def average_precision(scores, labels):
    """scikit-learn's average_precision_score (thresholds at distinct scores)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    positives = y.sum()
    ap, tp, i = 0.0, 0, 0
    while i < len(s):
        j = i
        group = 0
        while j < len(s) and s[j] == s[i]:
            group += y[j]
            j += 1
        if group:
            tp += group
            ap += group / positives * tp / j
        i = j
    return ap


def main():
    for path in sys.argv[1:]:
        data = np.loadtxt(path, delimiter=",")
        x, labels = data[:, :-1], data[:, -1].astype(bool)
        model = OnlineIsolationForest()
        scores = []
        start = time.time()
        try:
            for row in x:
                point = {f"f{i}": v for i, v in enumerate(row)}
                model.learn_one(point)
                scores.append(model.score_one(point))
        except Exception as e:  # ONAD's own failure is the result here
            print(f"{path}: ONAD crashed at point {len(scores) + 1}: {type(e).__name__}: {e}")
            continue
        rate = len(scores) / (time.time() - start)
        scores = np.array(scores)
        roc = roc_auc(scores[SKIP:], labels[SKIP:])
        pr = average_precision(scores[SKIP:], labels[SKIP:])
        print(f"{path}: {len(scores)} points, ROC-AUC {roc:.3f}, PR-AUC {pr:.3f}, {rate:.0f} points/s")


if __name__ == "__main__":
    main()
