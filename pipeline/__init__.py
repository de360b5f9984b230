"""Transfer learning from ImageNet-pretrained convnets: extract CNN codes, fit linear models, fine-tune, report.

The wings, each a sub-package that says what it owns; arrows point down this
list only (``tests/test_architecture.py`` checks it):

- ``data``: finding images, decoding them, batching them on threads, label-preserving views;
- ``backbones``: the registry of pretrained networks, their weights, the networks derived from them, the engines
  that run them, codes from pixels;
- ``store``: the HDF5 feature store and the extract stage that fills it;
- ``linear``: the model kinds, nested cross-validation, the fit stage and its bundles;
- ``finetune``: the fine-tuning stage (tail and full modes);
- ``deploy``: predicting with any trained model, exporting one graph, running exported models;
- ``escalate``: the advisor's situation, and the whole pipeline in one call;
- ``report``: evaluation grids and a bundle's report, with their figures;
- ``scaleout``: extraction and prediction on a Ray cluster.

Below them all: ``errors``, ``settings`` (every stage's settings derive from it), ``metrics``, ``results``,
``provenance`` and ``plots``.
"""

__version__ = "0.3.0"
