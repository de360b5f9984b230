"""Prediction speed, run by hand: predict.py with a bundle against its exported ONNX and LiteRT models.

Fits a softmax bundle on the Tux Paint codes, exports it (ONNX, LiteRT float32,
float16 and int8), then classifies the 220 Tux Paint images with each, in one
run: images/s of ``predict_images`` (decoding included), file sizes, and the
quantized models' top-1 agreement with the bundle.

    python benchmarks/predict_speed.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = "bundle (predict.py, ONNX engine)"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))  # fetch_data.py


def main() -> None:
    from fetch_data import fetch_tuxpaint

    from pipeline.deploy.config import ExportConfig, PredictConfig
    from pipeline.deploy.export import export
    from pipeline.deploy.predict import predict_images
    from pipeline.linear.config import FitConfig
    from pipeline.linear.fit import fit
    from pipeline.store.config import ExtractConfig
    from pipeline.store.extract import extract

    data = fetch_tuxpaint()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        extract(ExtractConfig(data=data, out=tmp / "tux.h5", progress=False))
        fit(FitConfig(store=tmp / "tux.h5", out=tmp / "run", classifiers=("softmax",), folds=3, repeats=1))
        bundle = tmp / "run" / "softmax.skops"
        models = {BUNDLE: bundle,
                  "exported ONNX": export(ExportConfig(bundle, "onnx", tmp / "m.onnx")),
                  "exported LiteRT float32": export(ExportConfig(bundle, "tflite", tmp / "m.tflite"))}
        for q in ("float16", "int8"):
            models[f"exported LiteRT {q}"] = export(ExportConfig(bundle, "tflite", tmp / f"{q}.tflite", quantize=q,
                                                                 calibration=data))
        top1, probabilities = {}, {}
        print(f"{len(list(data.rglob('*.png')))} Tux Paint images, efficientnet_lite0 penultimate codes, softmax")
        for name, path in models.items():
            predict_images(PredictConfig(path, (data,), progress=False))  # warm-up: conversion, first-call tracing
            start = time.perf_counter()
            predictions, _ = predict_images(PredictConfig(path, (data,), top_k=1, progress=False))
            seconds = time.perf_counter() - start
            top1[name] = [p.top[0][0] for p in predictions]
            everything = predict_images(PredictConfig(path, (data,), top_k=99, progress=False))[0]
            probabilities[name] = np.array([sorted(p.top) for p in everything])[..., 1]
            gap = np.abs(probabilities[name].astype(float) - probabilities[BUNDLE].astype(float)).max()
            size = path.stat().st_size / 2**20 if path.suffix != ".skops" else float("nan")
            agree = sum(a == b for a, b in zip(top1[name], top1[BUNDLE])) / len(predictions)
            print(f"  {name:34} {len(predictions) / seconds:7.1f} images/s   {size:5.1f} MiB   "
                  f"top-1 agreement with the bundle {agree:.3f}, largest probability difference {gap:.1e}")


if __name__ == "__main__":
    main()
