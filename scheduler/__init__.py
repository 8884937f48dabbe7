"""revalidator control plane: config, planning, dispatch, ledger, CLI. Never imports torch/onnxruntime/tensorrt."""

__version__ = "0.1.0"
