"""transformers and the libraries its runner loads models and quantization recipes with, from
package metadata (nothing is imported)."""

from importlib import metadata

from runners.probes.base import NotApplicable, ProbeContext, probe

# component -> distribution; tokenizers and safetensors decide what a folder loads as, torchao
# and accelerate what a recipe or a GGUF file becomes.
LIBRARIES = {"transformers": "transformers", "tokenizers": "tokenizers", "safetensors": "safetensors",
             "torchao": "torchao", "accelerate": "accelerate", "gguf": "gguf"}


@probe("transformers")
def transformers(ctx: ProbeContext) -> dict[str, str]:
    found = {}
    for component, dist in LIBRARIES.items():
        try:
            found[component] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if "transformers" not in found:
        raise NotApplicable("transformers is not installed")
    return found
