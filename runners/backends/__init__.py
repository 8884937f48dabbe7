"""Inference backends, registered by name and imported only when used."""

from __future__ import annotations

import importlib

from runners.backends.base import ArtifactError, Runner

# name -> "module:Class"; the module (and its heavy library) is imported on first use.
BACKENDS: dict[str, str] = {
    "onnxruntime": "runners.backends.onnxruntime_runner:OnnxRuntimeRunner",
    "torch": "runners.backends.torch_runner:TorchRunner",
    "tensorrt": "runners.backends.tensorrt_runner:TensorRTRunner",
}


def runner_class(name: str) -> type[Runner]:
    """The Runner class registered under `name`, or a plugin given as "package.module:Class"."""
    try:
        module_name, class_name = (name if ":" in name else BACKENDS[name]).split(":")
    except KeyError:
        raise ArtifactError(f"unknown runner {name!r} (known: {', '.join(BACKENDS)})") from None
    return getattr(importlib.import_module(module_name), class_name)


def make_runner(name: str, path: str, options: dict | None = None) -> Runner:
    return runner_class(name)(path, options or {})


__all__ = ["ArtifactError", "BACKENDS", "Runner", "make_runner", "runner_class"]
