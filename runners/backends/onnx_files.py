"""What an ONNX file refers to, read from its protobuf without the onnx package: the external
data files its tensors live in, and its graph outputs in graph order.

TensorRT targets need not have `onnx` installed, yet an engine built from a model whose weights
sit in external files must be keyed on those files too, or new weights would load an old engine.
The walker reads only the few fields that lead to tensors (mmap, no copy of the weights).
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

from runners.backends.base import ArtifactError

# Field numbers from onnx.proto (stable since IR version 3).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 1, 5, 12, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_VALUE_INFO_NAME = 1
_EXTERNAL = 1


class _Malformed(ValueError):
    pass


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint too long")


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: ints for varints, views for length-delimited fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise _Malformed("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")


def _tensor_location(tensor: memoryview) -> str | None:
    location, external = None, False
    for number, value in _fields(tensor):
        if number == _TENSOR_DATA_LOCATION:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA:
            entry = dict(_fields(value))
            if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
                location = bytes(entry.get(_ENTRY_VALUE, b"")).decode()
    return location if external else None


def _sparse_locations(sparse: memoryview) -> Iterator[str]:
    for number, value in _fields(sparse):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and (loc := _tensor_location(value)):
            yield loc


def _node_locations(node: memoryview) -> Iterator[str]:
    for number, attribute in _fields(node):
        if number != _NODE_ATTRIBUTE:
            continue
        for field, value in _fields(attribute):
            if field in (_ATTR_T, _ATTR_TENSORS) and (loc := _tensor_location(value)):
                yield loc
            elif field in (_ATTR_G, _ATTR_GRAPHS):  # If/Loop/Scan bodies
                yield from _graph_locations(value)
            elif field in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _sparse_locations(value)


def _graph_locations(graph: memoryview) -> Iterator[str]:
    for number, value in _fields(graph):
        if number == _GRAPH_INITIALIZER and (loc := _tensor_location(value)):
            yield loc
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse_locations(value)
        elif number == _GRAPH_NODE:
            yield from _node_locations(value)


def _read(path: Path, reader):  # noqa: ANN001, ANN202 - a tiny private helper
    try:
        with open(path, "rb") as handle:
            if path.stat().st_size == 0:
                raise _Malformed("empty file")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return reader(view)
                finally:
                    view.release()
    except (_Malformed, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc


def external_data_files(path: str | Path) -> list[Path]:
    """The external data files an ONNX model's tensors refer to, resolved beside the model,
    in name order without repeats. A reference that leaves the model's folder is refused."""
    path = Path(path)

    def read(view: memoryview) -> set[str]:
        found: set[str] = set()
        for number, value in _fields(view):
            if number == _MODEL_GRAPH:
                found.update(_graph_locations(value))
            elif number == _MODEL_FUNCTIONS:
                found.update(loc for n, node in _fields(value) if n == _FUNCTION_NODE for loc in _node_locations(node))
        return found

    folder = path.parent.resolve()
    files = []
    for location in sorted(_read(path, read)):
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise ArtifactError(f"{path}: external data {location!r} lies outside the model's folder")
        if not target.is_file():
            raise ArtifactError(f"{path}: its external data file {location!r} is missing (looked for {target})")
        files.append(target)
    return files


def graph_output_names(path: str | Path) -> list[str]:
    """The main graph's outputs, in graph order (the order onnxruntime's get_outputs() gives)."""
    def read(view: memoryview) -> list[str]:
        for number, graph in _fields(view):
            if number == _MODEL_GRAPH:
                return [bytes(dict(_fields(info)).get(_VALUE_INFO_NAME, b"")).decode()
                        for field, info in _fields(graph) if field == _GRAPH_OUTPUT]
        raise _Malformed("no graph")

    return _read(Path(path), read)
