"""Two runs' row-level outputs compared row by row, and two fingerprints compared component by component.

Shared by `reproduce` (a run against its re-run) and `compare` (one candidate on two targets). Reads the
blobs of runners/rowoutputs.py; imports numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runners import rowoutputs

# Row indices listed per model and per slice; the counts are always complete.
LISTED_ROWS = 50


class RowsUnavailable(ValueError):
    """A run without row outputs, or two runs whose rows are not the same rows."""


def load(blob: bytes | None, run_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not blob:
        raise RowsUnavailable(f"run {run_id} kept no row-level outputs (recorded before ledger schema v4, "
                              "or it ended in an error)")
    return rowoutputs.decode(blob)


def diff_rows(first: bytes | None, second: bytes | None, ids: tuple[str, str] = ("first", "second"),
              models: tuple[str, ...] = ("baseline", "candidate")) -> dict[str, Any]:
    """Which rows differ between two runs, per model and per slice.

    "differ" counts rows whose outputs are not bit-identical (top-1 or raw digest; token ids for
    generation); "top1_differ" rows whose answer differs (the predicted class; for generation, the
    same as "differ"). "agreement" is the share of rows with the same answer."""
    (a, meta_a), (b, meta_b) = load(first, ids[0]), load(second, ids[1])
    if meta_a["kind"] != meta_b["kind"] or meta_a["rows"] != meta_b["rows"] or \
            meta_a.get("slices") != meta_b.get("slices"):
        raise RowsUnavailable(f"runs {ids[0]} and {ids[1]} did not answer the same rows ({meta_a['kind']}, "
                              f"{meta_a['rows']} rows vs {meta_b['kind']}, {meta_b['rows']} rows, or other slices)")
    groups = rowoutputs.slice_rows(a, meta_a)
    out: dict[str, Any] = {"kind": meta_a["kind"], "rows": meta_a["rows"], "models": {}}
    for model in models:
        differ = rowoutputs.row_keys(a, meta_a, model) != rowoutputs.row_keys(b, meta_b, model)
        answer = (a[f"{model}_top1"] != b[f"{model}_top1"]) if meta_a["kind"] == "classification" else differ
        slices = []
        for (dimension, value), rows in groups.items():
            n = len(rows)
            slices.append({"dimension": dimension, "value": value, "n": n, "differ": int(differ[rows].sum()),
                           "top1_differ": int(answer[rows].sum()),
                           "agreement": float(1.0 - answer[rows].mean()) if n else None,
                           "rows": rows[answer[rows] | differ[rows]][:LISTED_ROWS].tolist()})
        same_sha = meta_a.get(f"{model}_sha256") == meta_b.get(f"{model}_sha256") if f"{model}_sha256" in meta_a \
            else not differ.any()
        out["models"][model] = {"differ": int(differ.sum()), "top1_differ": int(answer.sum()),
                                "agreement": float(1.0 - answer.mean()) if len(answer) else None,
                                "identical": bool(same_sha and not differ.any()),
                                "rows": np.flatnonzero(differ)[:LISTED_ROWS].tolist(),
                                "answer_rows": np.flatnonzero(answer)[:LISTED_ROWS].tolist(), "slices": slices}
    out["identical"] = all(m["identical"] for m in out["models"].values())
    return out


def diverging_slices(diff: dict[str, Any], model: str = "candidate") -> list[str]:
    """"dimension=value" of every slice (not the aggregate) where some row differs."""
    return [f"{s['dimension']}={s['value']}" for s in diff["models"][model]["slices"]
            if s["dimension"] != "all" and s["differ"]]


def fingerprint_diff(first: dict[str, Any] | None, second: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every component whose value differs between two fingerprints (their "components"), by name."""
    a = (first or {}).get("components", {})
    b = (second or {}).get("components", {})
    return [{"component": k, "first": a.get(k), "second": b.get(k)} for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]


def describe(diff: dict[str, Any], names: tuple[str, str]) -> list[str]:
    """Human lines for a row diff."""
    lines = []
    for model, m in diff["models"].items():
        if m["identical"]:
            lines.append(f"  {model}: all {diff['rows']} rows identical")
            continue
        head = f"  {model}: {m['differ']} of {diff['rows']} rows differ between {names[0]} and {names[1]}"
        if diff["kind"] == "classification":
            head += f", {m['top1_differ']} with another top-1 class (agreement {m['agreement']:.4f})"
        lines.append(head)
        if m["answer_rows"] or m["rows"]:
            lines.append(f"    rows: {', '.join(map(str, m['answer_rows'] or m['rows']))}"
                         + (" ..." if max(m["top1_differ"], m["differ"]) > LISTED_ROWS else ""))
        for s in m["slices"]:
            if s["dimension"] != "all" and s["differ"]:
                lines.append(f"    {s['dimension']}={s['value']}: {s['differ']}/{s['n']} differ, "
                             f"{s['top1_differ']} another answer")
    return lines
