"""Which stack changes affect which jobs.

A kernel, OS, CPU, Python or image change can alter any runner's numerics; a driver, CUDA or
GPU change only what runs on the GPU; a runtime upgrade only that runtime's runners. The
config may override any component (`impact:`), and a custom probe says what it affects.
"""

from __future__ import annotations

import re

from scheduler.config.schema import Config, Target

ALL, GPU = "all", "gpu"

DEFAULT_IMPACT: dict[str, str | tuple[str, ...]] = {
    "kernel": ALL, "os": ALL, "arch": ALL, "cpu_model": ALL, "cpu_flags": ALL, "cpu_microcode": ALL,
    "python": ALL, "container_image": ALL,
    "torch": ("torch", "transformers"), "torch_cuda": ("torch", "transformers"),
    "transformers": ("transformers",), "tokenizers": ("transformers",), "safetensors": ("transformers",),
    "torchao": ("transformers",), "accelerate": ("transformers",), "gguf": ("transformers",),
    "onnxruntime": ("onnxruntime",), "onnxruntime_build": ("onnxruntime",), "onnxruntime_providers": ("onnxruntime",),
    "tensorrt": ("tensorrt",),
    "nvidia_state": GPU, "nvidia_driver": GPU, "cuda_driver": GPU,
}
_GPU_COMPONENT = re.compile(r"^gpu\d+(_\w+)?$")
_GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider"}


# Runners whose dependencies revalidator cannot see (an external harness brings its own stack):
# any component may move their results, unless the config or a probe says otherwise.
OPAQUE_RUNNERS = frozenset({"lm-eval"})
# Runners that compute elsewhere (an OpenAI-compatible endpoint): no component of the target's own
# stack moves their outputs; a custom probe of the server (or an `impact:` entry) says what does.
REMOTE_RUNNERS = frozenset({"openai"})


def uses_gpu(target: Target, runner: str) -> bool:
    """Whether `runner` on `target` runs on an accelerator, by its configured options."""
    if runner == "onnxruntime":
        return bool(_GPU_PROVIDERS & set(target.options.onnxruntime.providers))
    if runner == "torch":
        return target.options.torch.device.startswith("cuda")
    if runner == "transformers":
        return target.options.transformers.device.startswith("cuda")
    return runner == "tensorrt"


def _rule(config: Config, target: Target, component: str) -> str | tuple[str, ...]:
    if component in config.impact:
        rule = config.impact[component]
        return rule if isinstance(rule, str) else tuple(rule)
    if component in target.probes:
        affects = target.probes[component].affects
        return affects if isinstance(affects, str) else tuple(affects)
    if component in DEFAULT_IMPACT:
        return DEFAULT_IMPACT[component]
    if _GPU_COMPONENT.match(component):
        return GPU
    return ALL  # an unknown component: assume the worst


def affects(config: Config, target_name: str, component: str, runner: str) -> bool:
    """Whether a change of `component` on `target_name` can change what `runner` computes there."""
    target = config.targets[target_name]
    rule = _rule(config, target, component)
    declared = component in config.impact or component in target.probes
    if runner in OPAQUE_RUNNERS and not declared:
        return True
    if runner in REMOTE_RUNNERS and not declared:
        return False
    if rule == ALL:
        return True
    if rule == GPU:
        return uses_gpu(target, runner)
    if runner == "onnxruntime" and "tensorrt" in rule:  # onnxruntime's TensorRT provider uses TensorRT
        return "TensorrtExecutionProvider" in target.options.onnxruntime.providers or runner in rule
    return runner in rule


def relevant_components(config: Config, target_name: str, components: dict[str, str],
                        runners: set[str]) -> dict[str, str]:
    """The part of a fingerprint that can change what these runners compute on this target."""
    return {k: v for k, v in components.items() if any(affects(config, target_name, k, r) for r in runners)}
