"""The bundled demo: models the project trained itself, built into ONNX and TorchScript artifacts.

Not part of the data plane: targets never import it. `python -m examples.build OUT_DIR` writes
the artifacts `targets.yaml` refers to.
"""
