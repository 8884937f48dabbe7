"""The TensorRT engine cache without TensorRT: its key (external weights included), its records,
atomic writes under concurrent writers (real processes and threads), and eviction of what is
damaged or refused by the runtime. ONNX external data is read from real ONNX files."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from runners.backends import engine_cache
from runners.backends.base import ArtifactError
from runners.backends.onnx_files import external_data_files, graph_output_names

KEY_ARGS = ("onnx-sha", "10.7.0", "NVIDIA H100 80GB HBM3", "9.0")


# -- the key ----------------------------------------------------------------------------------------------
def test_key_holds_external_data_and_every_build_setting_but_not_the_device() -> None:
    base = engine_cache.engine_key(*KEY_ARGS, {}, {"weights.bin": "aaa"})
    assert base == engine_cache.engine_key(*KEY_ARGS, {"fp16": False, "tf32": None, "device": "cuda:1",
                                                       "cache_dir": "/x", "max_batch_size": 4096},
                                           {"weights.bin": "aaa"})
    changed = [engine_cache.engine_key(*KEY_ARGS, {}, {"weights.bin": "bbb"}),  # new weights, same .onnx
               engine_cache.engine_key(*KEY_ARGS, {}, {"weights2.bin": "aaa"}),
               engine_cache.engine_key(*KEY_ARGS, {}, None),
               engine_cache.engine_key(*KEY_ARGS, {"tf32": True}, {"weights.bin": "aaa"}),
               engine_cache.engine_key(*KEY_ARGS, {"fp16": True}, {"weights.bin": "aaa"}),
               engine_cache.engine_key(*KEY_ARGS, {"opt_batch_size": 64}, {"weights.bin": "aaa"}),
               engine_cache.engine_key(*KEY_ARGS, {"max_batch_size": 100_000}, {"weights.bin": "aaa"})]
    assert base not in changed and len(set(changed)) == len(changed)


# -- what an ONNX file refers to --------------------------------------------------------------------------
def _two_output_model():  # noqa: ANN202
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    bias = numpy_helper.from_array(np.full(3, 2.0, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["features"]), helper.make_node("Add", ["features", "B"], ["logits"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])], [weights, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_data_files_of_real_onnx_models(tmp_path: Path) -> None:
    import onnx

    inline = tmp_path / "inline" / "m.onnx"
    inline.parent.mkdir()
    onnx.save(_two_output_model(), str(inline))
    assert external_data_files(inline) == []
    one = tmp_path / "one" / "m.onnx"
    one.parent.mkdir()
    onnx.save(_two_output_model(), str(one), save_as_external_data=True, location="m.data", size_threshold=0)
    assert external_data_files(one) == [(one.parent / "m.data").resolve()]
    many = tmp_path / "many" / "m.onnx"
    many.parent.mkdir()
    onnx.save(_two_output_model(), str(many), save_as_external_data=True, all_tensors_to_one_file=False,
              size_threshold=0)
    assert [p.name for p in external_data_files(many)] == ["B", "W"]
    (many.parent / "W").unlink()
    with pytest.raises(ArtifactError, match="its external data file 'W' is missing"):
        external_data_files(many)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    import onnx

    model = _two_output_model()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "model").mkdir()
    onnx.save(model, str(tmp_path / "elsewhere" / "m.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/w.bin"
    onnx.save(model, str(tmp_path / "model" / "m.onnx"))
    with pytest.raises(ArtifactError, match="lies outside the model's folder"):
        external_data_files(tmp_path / "model" / "m.onnx")


def test_graph_outputs_in_graph_order_and_damaged_files_named(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    onnx.save(_two_output_model(), str(path))
    assert graph_output_names(path) == ["logits", "features"] == \
        [o.name for o in ort.InferenceSession(str(path)).get_outputs()]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ArtifactError, match="broken.onnx: not a readable ONNX model"):
        graph_output_names(broken)


# -- records, eviction ------------------------------------------------------------------------------------
def test_record_round_trip_and_damage_is_detected() -> None:
    engine = bytes(range(256)) * 100
    record = engine_cache.pack(engine, {"network_outputs": ["logits"]})
    meta, back = engine_cache.unpack(record)
    assert back == engine and meta["engine_sha256"] == hashlib.sha256(engine).hexdigest()
    for damaged in (record[:-1], record[: len(record) // 2], b"", b"not an engine", record[:-10] + b"0" * 10):
        with pytest.raises(engine_cache.CacheDamaged):
            engine_cache.unpack(damaged)


class Runtime:
    """Stands in for TensorRT's runtime: deserializes the engines it is told are good, else None."""

    def __init__(self, refuse: set[bytes] = frozenset()) -> None:
        self.refuse = refuse

    def deserialize(self, engine: bytes) -> object:
        return None if engine in self.refuse else ("engine", engine)


def _builder(engine: bytes, calls: list[int]):  # noqa: ANN202
    def build() -> tuple[bytes, dict]:
        calls.append(1)
        return engine, {"network_outputs": ["logits"]}
    return build


def test_a_truncated_cached_engine_is_evicted_and_rebuilt(tmp_path: Path) -> None:
    path, calls = tmp_path / "m-key.engine", []
    first = engine_cache.load_or_build(path, _builder(b"E" * 1000, calls), Runtime().deserialize)
    assert (first.from_cache, first.evicted, len(calls)) == (False, [], 1)
    again = engine_cache.load_or_build(path, _builder(b"E" * 1000, calls), Runtime().deserialize)
    assert again.from_cache and len(calls) == 1 and again.meta["engine_sha256"] == first.meta["engine_sha256"]
    path.write_bytes(path.read_bytes()[:-300])  # a copy cut short, a full disk...
    rebuilt = engine_cache.load_or_build(path, _builder(b"E" * 1000, calls), Runtime().deserialize)
    assert (rebuilt.from_cache, rebuilt.evicted, len(calls)) == (False, ["damaged record"], 2)
    assert engine_cache.unpack(path.read_bytes())[1] == b"E" * 1000


def test_an_engine_the_runtime_refuses_is_evicted_not_blamed_on_the_model_forever(tmp_path: Path) -> None:
    path, calls = tmp_path / "m-key.engine", []
    engine_cache.write_atomic(path, engine_cache.pack(b"stale", {}))
    loaded = engine_cache.load_or_build(path, _builder(b"fresh", calls), Runtime(refuse={b"stale"}).deserialize)
    assert (loaded.from_cache, loaded.engine, loaded.evicted) == (False, ("engine", b"fresh"),
                                                                  ["the runtime could not deserialize it"])
    assert engine_cache.unpack(path.read_bytes())[1] == b"fresh"
    with pytest.raises(RuntimeError, match="the engine just built cannot be deserialized"):
        engine_cache.load_or_build(tmp_path / "other.engine", _builder(b"bad", calls),
                                   Runtime(refuse={b"bad"}).deserialize)
    assert not (tmp_path / "other.engine").exists()


# -- concurrent writers -----------------------------------------------------------------------------------
def _write_many(path: str, writer: int, times: int) -> None:
    engine = bytes([writer]) * (2 << 20)  # 2 MB: a write takes long enough to overlap others
    for _ in range(times):
        engine_cache.write_atomic(Path(path), engine_cache.pack(engine, {"writer": writer}))


def _read_until(path: str, stop, seen, damaged) -> None:  # noqa: ANN001
    while not stop.is_set():
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue
        try:
            meta, engine = engine_cache.unpack(data)
        except engine_cache.CacheDamaged as exc:
            damaged.append(str(exc))
            continue
        assert engine == bytes([meta["writer"]]) * (2 << 20)
        seen.add(meta["writer"])


def test_concurrent_writer_processes_never_expose_half_an_engine(tmp_path: Path) -> None:
    path = str(tmp_path / "m-key.engine")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(path, w, 15)) for w in range(1, 5)]
    stop, seen, damaged = threading.Event(), set(), []
    reader = threading.Thread(target=_read_until, args=(path, stop, seen, damaged))
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=300)
    stop.set()
    reader.join()
    assert [w.exitcode for w in writers] == [0, 0, 0, 0]
    assert damaged == []
    meta, _ = engine_cache.unpack(Path(path).read_bytes())
    assert meta["writer"] in {1, 2, 3, 4} and seen <= {1, 2, 3, 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-key.engine"]  # no temp file left behind


def test_concurrent_builder_threads_each_get_a_whole_engine(tmp_path: Path) -> None:
    path = tmp_path / "m-key.engine"
    barrier, results, errors = threading.Barrier(6), [], []

    def job() -> None:
        try:
            barrier.wait()
            results.append(engine_cache.load_or_build(path, _builder(b"E" * (1 << 20), []), Runtime().deserialize))
        except Exception as exc:  # collected: an assertion in a thread would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 6
    assert all(r.engine == ("engine", b"E" * (1 << 20)) and r.evicted == [] for r in results)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-key.engine"]
