"""onnxruntime and the execution providers its installed build ships."""

from runners.probes.base import ProbeContext, probe
from runners.probes.packages import distribution, package_path

# onnxruntime ships one shared library per optional execution provider.
_PROVIDER_LIBRARIES = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                       "openvino": "OpenVINOExecutionProvider", "rocm": "ROCMExecutionProvider",
                       "dnnl": "DnnlExecutionProvider"}


@probe("onnxruntime")
def onnxruntime(ctx: ProbeContext) -> dict[str, str]:
    dist = distribution("onnxruntime-gpu", "onnxruntime")
    capi = package_path(dist, "onnxruntime/capi")
    providers = ["CPUExecutionProvider"] + [
        provider for lib, provider in _PROVIDER_LIBRARIES.items()
        if (capi / f"libonnxruntime_providers_{lib}.so").exists() or (capi / f"onnxruntime_providers_{lib}.dll").exists()]
    return {"onnxruntime": dist.version, "onnxruntime_build": dist.metadata["Name"],
            "onnxruntime_providers": ",".join(providers)}
