"""The choices of how a backbone runs, importable without Keras (settings and ``--help`` read them)."""

DEFAULT_BACKBONE = "efficientnet_lite0"
ENGINES = ("auto", "keras", "onnx")  # what runs a frozen network (pipeline.backbones.engine)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # Keras dtype policies (pipeline.backbones.device)
