"""revalidator control plane: config, planning, dispatch, ledger, CLI. Never imports torch/onnxruntime/tensorrt."""
