"""Codes from pixels: decoding batches on threads while a frozen network turns each into pooled codes, for the
images and each of their fixed views. Shared by every place that extracts: here, on a cluster, in a cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.decode import ResizePolicy
from ..data.loader import decoded_batches
from ..data.views import views_of
from .engine import FrozenNetwork, frozen_network
from .loading import Backbone
from .spec import BackboneSpec


def resize_policy(spec: BackboneSpec, mode: str = "crop") -> ResizePolicy:
    """How an image becomes ``spec``'s input: its size, crop fraction and interpolation, with ``mode``."""
    return ResizePolicy(spec.input_size, mode, spec.crop_fraction, spec.interpolation)


def code_dim(backbone: Backbone, layer: str) -> int:
    """The length of ``layer``'s pooled code (its channels), from the graph alone."""
    if backbone.classifier is None:  # an ONNX network
        return frozen_network(backbone, "features", (layer,)).dims[0]
    return int(backbone.classifier.get_layer(backbone.spec.feature_layers[layer]).output.shape[-1])


def layer_widths(spec: BackboneSpec) -> dict[str, int]:
    """Each feature layer's pooled code length, from ``spec``'s graph built without weights (nothing loaded)."""
    graph = spec.builder(spec, None, include_top=False)
    return {name: int(graph.get_layer(layer).output.shape[-1]) for name, layer in spec.feature_layers.items()}


def iter_codes(network: FrozenNetwork, files: list[Path], policy: ResizePolicy, batch_size: int,
               workers: int | None = None, progress: bool = True, desc: str = "extract", views: tuple[str, ...] = ()):
    """Yield ``(batch, {(layer, view): codes of batch.ok})`` for ``files`` (view None: the images; with ``views``,
    theirs too), decoding in parallel with the network."""
    bar = tqdm(total=len(files), unit="img", desc=desc, disable=not progress or not files, dynamic_ncols=True)
    skipped = 0
    try:
        for batch in decoded_batches(files, policy, batch_size, workers):
            yield batch, codes_of_views(network, batch.pixels, views, len(batch.ok))
            bar.update(len(batch.items))
            if batch.failed:
                skipped += len(batch.failed)
                bar.set_postfix(skipped=skipped, refresh=False)
    finally:
        bar.close()


def codes_of_views(network: FrozenNetwork, pixels: np.ndarray, views: tuple[str, ...] = (),
                   n: int | None = None) -> dict[tuple[str, str | None], np.ndarray]:
    """``{(layer, view): codes}`` of the first ``n`` images of a batch (view None) and of each of their
    ``views``."""
    codes = {}
    for v, seen in zip((None, *views), views_of(pixels, views)):
        codes |= {(name, v): np.asarray(o[:n], np.float32) for name, o in zip(network.outputs, network(seen))}
    return codes
