"""Quantization recipes applied to a model at load: for quantizers whose output cannot be saved
(or is not worth saving), a candidate is the baseline's weights plus a named recipe.

Each recipe names its library, and the record carries that library's installed version, so the
provenance says exactly what quantized the model. torch and torchao are imported lazily.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable

from runners.backends.base import ArtifactError


def _linear_but_head(module: Any, fqn: str) -> bool:
    import torch

    # lm_head is tied to the embedding in most small LLMs: quantizing it would quantize both.
    return isinstance(module, torch.nn.Linear) and not fqn.endswith("lm_head")


def _torchao_int8_weight_only(model: Any) -> Any:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=_linear_but_head)
    return model


def _torchao_int4_weight_only_g32(model: Any) -> Any:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)), filter_fn=_linear_but_head)
    return model


def _torch_dynamic_int8(model: Any) -> Any:
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao's eager quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# name -> (library distribution, what it does, the function)
RECIPES: dict[str, tuple[str, str, Callable[[Any], Any]]] = {
    "torchao-int8-weight-only": ("torchao", "int8 per-channel weights, float activations; lm_head kept",
                                 _torchao_int8_weight_only),
    "torchao-int4-weight-only-g32": ("torchao", "int4 weights in groups of 32, float activations; lm_head kept",
                                     _torchao_int4_weight_only_g32),
    "torch-dynamic-int8": ("torch", "int8 weights and per-tensor dynamic int8 activations in every Linear",
                           _torch_dynamic_int8),
}


def recipe_record(name: str) -> dict[str, str]:
    """What the provenance keeps of a recipe: its name, library and that library's version."""
    library, description, _ = _lookup(name)
    try:
        version = metadata.version(library)
    except metadata.PackageNotFoundError:
        version = "not installed"
    return {"recipe": name, "library": library, "library_version": version, "description": description}


def apply_recipe(name: str, model: Any) -> Any:
    library, _, function = _lookup(name)
    try:
        return function(model)
    except ImportError as exc:
        raise ArtifactError(f"recipe {name!r} needs {library}, which cannot be imported here ({exc})") from exc


def _lookup(name: str) -> tuple[str, str, Callable[[Any], Any]]:
    try:
        return RECIPES[name]
    except KeyError:
        raise ArtifactError(f"unknown quantization recipe {name!r} (known: {', '.join(RECIPES)})") from None
