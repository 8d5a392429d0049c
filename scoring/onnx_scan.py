"""Just enough of the ONNX protobuf wire format to find tensors stored as external data, so that
scoring can refuse such graphs without the ``onnx`` package."""

from collections.abc import Iterator

# per message kind, the fields that hold messages which can (transitively) hold tensors
_ONNX_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto
    "node": {5: "attribute"},  # NodeProto
    "function": {7: "node", 11: "attribute"},  # FunctionProto
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_MAX_NESTING = 64


class MalformedError(Exception):
    """The bytes are not a well-formed protobuf message."""


def external_tensor(blob: bytes) -> str | None:
    """Name of a tensor of a ModelProto stored as external data, or None when there is none."""
    stack = [("model", 0, len(blob), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_NESTING:
            raise MalformedError("graphs nest too deep")
        if kind == "tensor":
            name, external = "?", False
            for field, wire, a, b in _wire_fields(blob, start, end):
                if field == _TENSOR_NAME and wire == 2:
                    name = blob[a:b].decode("utf-8", errors="replace")
                elif field == _TENSOR_EXTERNAL_DATA or (
                        field == _TENSOR_DATA_LOCATION and wire == 0 and a == 1):
                    external = True
            if external:
                return name
            continue
        schema = _ONNX_SCHEMA[kind]
        for field, wire, a, b in _wire_fields(blob, start, end):
            if wire == 2 and field in schema:
                stack.append((schema[field], a, b, depth + 1))
    return None


def _wire_fields(blob: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, a, b)`` per field of the message in ``blob[pos:end]``: for
    length-delimited fields the payload is ``blob[a:b]``, for varints ``a`` is the value."""
    while pos < end:
        key, pos = _varint(blob, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedError("field number 0")
        if wire == 0:
            value, pos = _varint(blob, pos, end)
            yield field, wire, value, pos
        elif wire == 2:
            size, pos = _varint(blob, pos, end)
            if pos + size > end:
                raise MalformedError("a field runs past the end of its message")
            yield field, wire, pos, pos + size
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise MalformedError("a field runs past the end of its message")
        else:
            raise MalformedError(f"unsupported wire type {wire}")


def _varint(blob: bytes, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while shift < 70:
        if pos >= end:
            raise MalformedError("truncated varint")
        byte = blob[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MalformedError("varint too long")
