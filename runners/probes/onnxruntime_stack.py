"""onnxruntime and the execution providers its installed build ships."""

from runners.probes.base import ProbeContext, probe
from runners.probes.packages import distribution, file_names

# onnxruntime ships one shared library per optional execution provider.
_PROVIDER_LIBRARIES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                       "openvino": "OpenVINOExecutionProvider", "rocm": "ROCMExecutionProvider",
                       "dnnl": "DnnlExecutionProvider"}


@probe("onnxruntime")
def onnxruntime(ctx: ProbeContext) -> dict[str, str]:
    dist = distribution("onnxruntime-gpu", "onnxruntime")
    names = file_names(dist)
    providers = ["CPUExecutionProvider"] + [
        provider for lib, provider in _PROVIDER_LIBRARIES.items()
        if f"libonnxruntime_providers_{lib}.so" in names or f"onnxruntime_providers_{lib}.dll" in names]
    return {"onnxruntime": dist.version, "onnxruntime_build": dist.metadata["Name"],
            "onnxruntime_providers": ",".join(providers)}
