"""A full local stack probe, in a fresh process each time, and whether it imported torch.

Usage: python benchmarks/probe.py [--runs N]
Last line: {"metric": "probe_seconds", "value": <median>, "target": 0.1, "ok": ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = ("import json, sys; from runners.probes import probe_stack; s = probe_stack(); "
        "print(json.dumps({'seconds': s['probe_seconds'], 'components': len(s['components']), "
        "'heavy_imports': [m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules], "
        "'probes': {k: round(v['seconds'] * 1000, 2) for k, v in s['probes'].items()}}))")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    samples = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, check=True)
        samples.append(json.loads(out.stdout))
    median = statistics.median(s["seconds"] for s in samples)
    slowest = max(samples, key=lambda s: s["seconds"])
    heavy = sorted({m for s in samples for m in s["heavy_imports"]})
    print(json.dumps({"runs": args.runs, "median_s": round(median, 4), "max_s": round(slowest["seconds"], 4),
                      "components": samples[0]["components"], "heavy_imports": heavy,
                      "per_probe_ms_in_slowest": slowest["probes"]}))
    print(json.dumps({"metric": "probe_seconds", "value": round(median, 4), "target": 0.1,
                      "ok": median < 0.1 and not heavy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
