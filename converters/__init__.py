"""mvmoe's converters: a trained checkpoint -> Core ML, ExecuTorch, LiteRT and ONNX artifacts, each
checked for parity against PyTorch (``converters.pipeline.export_checkpoint``). Installed beside the
``mobile_vmoe`` package by the mvmoe wheel; imported as ``converters`` in a checkout and from the
wheel alike."""
