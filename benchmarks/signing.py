"""What signature verification adds to loading a model version (it runs once per version, never per request).

For each built-in algorithm: fit on the built-in data, save as the trainer does (MLflow sklearn flavour, skops),
sign, then time `Verifier.verify` and the skops load it precedes. Prints a Markdown table.

    python benchmarks/signing.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow.sklearn
import skops.io

from modelops.serving.model import TRUSTED_SKOPS_TYPES
from modelops.signing import Verifier, generate_keypair, sign_model
from modelops.training.data import load_dataset
from modelops.training.options import ALGORITHMS
from modelops.training.train import build_model


def median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    data = load_dataset(None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keypair(root / "key.pem", root / "key.pub")
        verifier = Verifier.from_path(root / "key.pub")
        print("| algorithm | model folder | sign (ms) | verify (ms) | skops load (ms) |")
        print("| --- | --- | --- | --- | --- |")
        for algorithm in ALGORITHMS:
            model = build_model(algorithm, {}, 42).fit(data.features.to_numpy(), data.target.to_numpy())
            folder = root / algorithm / "model"
            mlflow.sklearn.save_model(
                model,
                str(folder),
                serialization_format="skops",
                skops_trusted_types=list(TRUSTED_SKOPS_TYPES),
            )
            start = time.perf_counter()
            sign_model(folder, root / "key.pem", model_name="bench", run_id="run")
            sign_ms = (time.perf_counter() - start) * 1000
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            verify = median_ms(
                lambda f=folder: verifier.verify(f, model_name="bench", run_id="run"), args.repeat
            )
            load = median_ms(
                lambda f=folder: skops.io.load(f / "model.skops", trusted=list(TRUSTED_SKOPS_TYPES)),
                args.repeat,
            )
            print(f"| {algorithm} | {size / 1024:.0f} KiB | {sign_ms:.1f} | {verify:.1f} | {load:.1f} |")


if __name__ == "__main__":
    main()
