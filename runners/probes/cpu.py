"""CPU model, microcode and the instruction-set flags that select quantized kernels."""

import platform

from runners.probes.base import ProbeContext, probe, read_text

# Flags that pick int8/bf16 kernels: dot-product instructions, AVX-512 variants, AMX tiles, Arm dot/matmul.
QUANT_CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                   "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
                   "asimd", "asimddp", "sve", "i8mm", "bf16")


def parse_cpuinfo(text: str) -> dict[str, str]:
    """Model name, quantization-relevant flags and microcode from /proc/cpuinfo (first CPU)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return {
        "cpu_model": fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or "unknown",
        "cpu_flags": ",".join(f for f in QUANT_CPU_FLAGS if f in flags),
        "cpu_microcode": fields.get("microcode", "n/a"),
    }


@probe("cpu")
def cpu(ctx: ProbeContext) -> dict[str, str]:
    return {"arch": platform.machine(), **parse_cpuinfo(read_text(ctx.proc_root / "cpuinfo"))}
