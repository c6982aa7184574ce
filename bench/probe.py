"""Linear-probe benchmark: one fit at a fixed L2 strength on 50,000 x 512 standardised float32 features (10
classes), simclr's full-batch L-BFGS in torch against scikit-learn's LogisticRegression, in one run.

Features: CIFAR-10 train (fit) and test (accuracy) through a ResNet-18 (CIFAR stem, full width: D = 512) with
random weights (torchvision's initialisation). The two objectives are the same: simclr minimises
mean cross-entropy + l2/2 |W|^2, scikit-learn C * sum cross-entropy + 1/2 |W|^2, so C = 1 / (l2 * N).

    python bench/probe.py --out bench/results/probe.json      (needs scikit-learn: pip install 'simclr[bench]')
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import cifar_root, machine, write_json

from simclr.data.datasets import torchvision_split
from simclr.embed.torch_encoder import TorchEncoder
from simclr.evaluate.linear import fit_logistic_regression, topk_accuracy
from simclr.train.config import ModelConfig


def features(split, encoder: TorchEncoder, batch: int = 500) -> np.ndarray:
    images = split.images.permute(0, 2, 3, 1).contiguous().numpy()
    return np.concatenate([encoder.embed(images[start:start + batch]) for start in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--l2", type=float, default=1e-4, help="L2 strength of both fits (default 1e-4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed fits of each; the median is reported")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    root = cifar_root()
    train, test = torchvision_split("cifar10", root, train=True), torchvision_split("cifar10", root, train=False)
    encoder = TorchEncoder.random(ModelConfig(arch="resnet18", width=1.0), 32, seed=0)
    train_x, test_x = features(train, encoder), features(test, encoder)
    mean, std = train_x.mean(axis=0), np.maximum(train_x.std(axis=0), 1e-6)
    train_x, test_x = ((train_x - mean) / std).astype(np.float32), ((test_x - mean) / std).astype(np.float32)
    train_y, test_y = train.labels.numpy(), test.labels.numpy()
    c = 1.0 / (args.l2 * len(train_y))

    ours_times, ours_accuracy = [], 0.0
    for _ in range(args.repeats):
        started = time.perf_counter()
        classifier = fit_logistic_regression(train_x, train_y, 10, args.l2)
        ours_times.append(time.perf_counter() - started)
        ours_accuracy = topk_accuracy(classifier.scores(test_x), test_y, 1)

    sklearn_times, sklearn_accuracy = [], 0.0
    for _ in range(args.repeats):
        model = LogisticRegression(solver="lbfgs", C=c, tol=1e-4, max_iter=1000)
        started = time.perf_counter()
        model.fit(train_x, train_y)
        sklearn_times.append(time.perf_counter() - started)
        sklearn_accuracy = float((model.predict(test_x) == test_y).mean())

    import sklearn

    write_json({
        "benchmark": "probe", "machine": machine(), "features": "CIFAR-10 train 50,000 x 512 (random-weights "
        "ResNet-18), standardised; test 10,000", "l2": args.l2,
        "simclr": {"settings": "torch L-BFGS, full batch, strong Wolfe line search, history 20, max_iter 500, "
                               "tolerance_grad 1e-6, float32", "seconds_median": statistics.median(ours_times),
                   "seconds": ours_times, "test_top1": ours_accuracy, "threads": torch.get_num_threads()},
        "sklearn": {"settings": f"LogisticRegression(solver='lbfgs', C={c:.6g}, tol=1e-4, max_iter=1000), "
                                f"scikit-learn {sklearn.__version__}",
                    "seconds_median": statistics.median(sklearn_times),
                    "seconds": sklearn_times, "test_top1": sklearn_accuracy, "iterations": int(model.n_iter_[0])},
        "speedup": statistics.median(sklearn_times) / statistics.median(ours_times),
        "accuracy_difference_points": 100 * (ours_accuracy - sklearn_accuracy),
    }, args.out)


if __name__ == "__main__":
    main()
