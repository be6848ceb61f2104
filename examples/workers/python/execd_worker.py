"""The worker side of execd's persistent-worker protocol, in plain Python 3.

execd talks to a persistent worker over the worker's stdin (requests) and stdout
(responses); the contract is protos/execd/worker/v1/worker.proto. Every message is a
protobuf message prefixed with its size as a base-128 varint. This module encodes and
decodes the few fields of WorkRequest and WorkResponse by hand, so it needs nothing but
the standard library.

    import execd_worker

    def handle(arguments, stdin):
        return 0, stdin.upper(), b""

    execd_worker.serve(handle)

serve() answers the start-up health check (request_id 0) itself, calls the handler for
every other request, one at a time, and returns when execd closes the worker's stdin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import traceback
from typing import BinaryIO, Callable, Optional

__all__ = [
    "ProtocolError",
    "Request",
    "Response",
    "serve",
    "decode_request",
    "encode_request",
    "decode_response",
    "encode_response",
    "read_frame",
    "write_frame",
]

_UINT64_MASK = (1 << 64) - 1
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1
# protobuf refuses messages of 2 GiB and more.
_MAX_FRAME = (1 << 31) - 1

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class ProtocolError(Exception):
    """The input is not the framed protocol of worker.proto."""


@dataclasses.dataclass
class Request:
    """A WorkRequest."""

    request_id: int = 0
    arguments: list[str] = dataclasses.field(default_factory=list)
    stdin: bytes = b""
    cancel: bool = False


@dataclasses.dataclass
class Response:
    """A WorkResponse. A handler may return one instead of a tuple."""

    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    request_id: int = 0
    was_cancelled: bool = False


# --- Encoding -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """Encodes a value in [0, 2**64) as a base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _len_field(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def _encode_str(s: str) -> bytes:
    # surrogateescape gives back the bytes that _decode_str could not decode.
    return s.encode("utf-8", "surrogateescape")


def _decode_str(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def encode_request(request: Request) -> bytes:
    """Serialises a WorkRequest (without the size prefix), as protobuf would."""
    out = bytearray()
    if request.request_id:
        out += _key(1, _VARINT) + _varint(request.request_id & _UINT64_MASK)
    for argument in request.arguments:
        out += _len_field(2, _encode_str(argument))
    if request.stdin:
        out += _len_field(3, bytes(request.stdin))
    if request.cancel:
        out += _key(4, _VARINT) + b"\x01"
    return bytes(out)


def encode_response(response: Response) -> bytes:
    """Serialises a WorkResponse (without the size prefix), as protobuf would.

    Fields are written in field-number order and those equal to their default are left
    out, so the bytes are identical to those of the C++ SerializeToString().
    """
    if not _INT32_MIN <= response.exit_code <= _INT32_MAX:
        raise ValueError(f"exit_code {response.exit_code} does not fit in an int32")
    out = bytearray()
    if response.request_id:
        out += _key(1, _VARINT) + _varint(response.request_id & _UINT64_MASK)
    if response.exit_code:
        # A negative int32 is sign-extended to 64 bits: a 10-byte varint.
        out += _key(2, _VARINT) + _varint(response.exit_code & _UINT64_MASK)
    if response.stdout:
        out += _len_field(3, bytes(response.stdout))
    if response.stderr:
        out += _len_field(4, bytes(response.stderr))
    if response.was_cancelled:
        out += _key(5, _VARINT) + b"\x01"
    return bytes(out)


# --- Decoding -------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Returns (value, position after it); the value is truncated to 64 bits."""
    value = 0
    for i in range(10):
        if pos >= len(data):
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value & _UINT64_MASK, pos
    raise ProtocolError("varint longer than 10 bytes")


def _fields(data: bytes):
    """Yields (field number, wire type, value) of a serialised message.

    The value is an int for varints and bytes for the other wire types. Groups (wire
    types 3 and 4) are deprecated and not accepted.
    """
    pos = 0
    end = len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ProtocolError("field number 0")
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos)
        elif wire_type == _I64 or wire_type == _I32:
            size = 8 if wire_type == _I64 else 4
            if pos + size > end:
                raise ProtocolError("truncated fixed-width field")
            value, pos = data[pos:pos + size], pos + size
        elif wire_type == _LEN:
            size, pos = _read_varint(data, pos)
            if size > end - pos:
                raise ProtocolError("truncated length-delimited field")
            value, pos = data[pos:pos + size], pos + size
        else:
            raise ProtocolError(f"unsupported wire type {wire_type}")
        yield field, wire_type, value


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def decode_request(data: bytes) -> Request:
    """Parses a serialised WorkRequest. Unknown fields are skipped."""
    request = Request()
    for field, wire_type, value in _fields(data):
        if field == 1 and wire_type == _VARINT:
            request.request_id = value
        elif field == 2 and wire_type == _LEN:
            request.arguments.append(_decode_str(value))
        elif field == 3 and wire_type == _LEN:
            request.stdin = bytes(value)
        elif field == 4 and wire_type == _VARINT:
            request.cancel = value != 0
    return request


def decode_response(data: bytes) -> Response:
    """Parses a serialised WorkResponse. Unknown fields are skipped."""
    response = Response()
    for field, wire_type, value in _fields(data):
        if field == 1 and wire_type == _VARINT:
            response.request_id = value
        elif field == 2 and wire_type == _VARINT:
            response.exit_code = _as_int32(value)
        elif field == 3 and wire_type == _LEN:
            response.stdout = bytes(value)
        elif field == 4 and wire_type == _LEN:
            response.stderr = bytes(value)
        elif field == 5 and wire_type == _VARINT:
            response.was_cancelled = value != 0
    return response


# --- Framing --------------------------------------------------------------------------


def read_frame(stream: BinaryIO) -> Optional[bytes]:
    """Reads one size-prefixed message; None at end of input between frames."""
    size = 0
    for i in range(10):
        byte = stream.read(1)
        if not byte:
            if i == 0:
                return None
            raise ProtocolError("end of input inside a frame's size")
        size |= (byte[0] & 0x7F) << (7 * i)
        if not byte[0] & 0x80:
            break
    else:
        raise ProtocolError("frame size longer than 10 bytes")
    if size > _MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is too large")
    data = stream.read(size) if size else b""
    if len(data) != size:
        raise ProtocolError(f"end of input inside a frame: {len(data)} of {size} bytes")
    return data


def write_frame(stream: BinaryIO, data: bytes) -> None:
    """Writes one size-prefixed message and flushes."""
    stream.write(_varint(len(data)) + data)
    stream.flush()


# --- Serving --------------------------------------------------------------------------


def _as_bytes(value, what: str) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"handler returned {type(value).__name__} as {what}; expected bytes")


def _to_response(result) -> Response:
    """Turns what a handler returned into a Response (request_id not yet set)."""
    if result is None:
        return Response()
    if isinstance(result, int):  # Just an exit code.
        return Response(exit_code=result)
    if isinstance(result, tuple):
        if len(result) != 3:
            raise TypeError(f"handler returned a tuple of {len(result)} items; expected "
                            "(exit_code, stdout, stderr)")
        exit_code, stdout, stderr = result
    elif all(hasattr(result, name) for name in ("exit_code", "stdout", "stderr")):
        # A Response or anything with the same attributes.
        exit_code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    else:  # Not an answer (bytes, a list...): never a silent exit code 0 with no output.
        raise TypeError(f"handler returned {type(result).__name__}; expected (exit_code, "
                        "stdout, stderr), a Response, an int or None")
    if not isinstance(exit_code, int):
        raise TypeError(f"handler returned {type(exit_code).__name__} as exit_code")
    if not _INT32_MIN <= exit_code <= _INT32_MAX:
        raise ValueError(f"handler returned exit_code {exit_code}, not an int32")
    return Response(exit_code=exit_code, stdout=_as_bytes(stdout, "stdout"),
                    stderr=_as_bytes(stderr, "stderr"))


def _exit_response(e: SystemExit) -> Response:
    """What Python itself would exit with for sys.exit(e.code)."""
    code = e.code
    if code is None:
        return Response()
    if isinstance(code, int) and _INT32_MIN <= code <= _INT32_MAX:
        return Response(exit_code=code)
    return Response(exit_code=1, stderr=_as_bytes(f"{code}\n", "stderr"))


class _Captured(io.BytesIO):
    """The handler's sys.stdout.buffer; it survives the handler closing sys.stdout."""

    def close(self) -> None:
        pass


def _run(handler: Callable, request: Request) -> Response:
    """Calls the handler with sys.stdin and sys.stdout redirected to the request.

    While the handler runs, sys.stdin reads the request's stdin and whatever it writes
    to sys.stdout (print(), sys.stdout.buffer.write()) is appended to the response's
    stdout, so that it cannot corrupt the protocol on the real stdout. An exception
    becomes exit code 1 with its traceback on stderr; sys.exit(N) becomes exit code N.
    """
    captured = _Captured()
    fake_stdout = io.TextIOWrapper(captured, encoding="utf-8", errors="surrogateescape",
                                   write_through=True)
    fake_stdin = io.TextIOWrapper(io.BytesIO(request.stdin), encoding="utf-8",
                                  errors="surrogateescape")
    saved_stdin = sys.stdin
    sys.stdin = fake_stdin
    try:
        with contextlib.redirect_stdout(fake_stdout):
            try:
                response = _to_response(handler(list(request.arguments), request.stdin))
            except SystemExit as e:
                response = _exit_response(e)
            # BaseException: KeyboardInterrupt, GeneratorExit and the like are the
            # handler's failure too, not the worker's.
            except BaseException:  # pylint: disable=broad-except
                response = Response(exit_code=1,
                                    stderr=traceback.format_exc().encode("utf-8", "replace"))
            try:
                fake_stdout.flush()
            except Exception:  # pylint: disable=broad-except  # e.g. the handler closed it.
                pass
    finally:
        sys.stdin = saved_stdin
    response.stdout += captured.getvalue()
    return response


def _take_stdout() -> BinaryIO:
    """Keeps fd 1 for the frames alone: they go to a private copy of it, and fd 1 becomes
    a copy of stderr. So nothing else (a child process, os.write(1, ...), a thread that
    prints after its handler returned) can write into the protocol stream; it all lands
    on stderr instead."""
    sys.stdout.flush()
    private = os.dup(1)  # Not inherited by children (os.dup's default).
    os.dup2(2, 1)
    return os.fdopen(private, "wb")


def serve(handler: Callable, *, input_stream: Optional[BinaryIO] = None,
          output_stream: Optional[BinaryIO] = None) -> None:
    """Serves requests until execd closes the worker's stdin, then returns.

    handler(arguments: list[str], stdin: bytes) returns (exit_code, stdout, stderr), a
    Response (or any object with exit_code, stdout and stderr attributes), an int (the
    exit code, no output) or None (exit code 0, no output). stdout and stderr may be
    bytes or str (encoded as UTF-8).

    Requests are served one at a time, so a cancel can only arrive after its request has
    been answered; such cancels are ignored, as worker.proto allows. A handler that must
    be stopped while it runs is killed by execd after the pool's kill grace.

    Raises ProtocolError when the input is not well-formed frames; let it escape so that
    the worker exits with the reason on stderr and execd replaces it.
    """
    in_stream = input_stream if input_stream is not None else sys.stdin.buffer
    out_stream = output_stream if output_stream is not None else _take_stdout()
    while True:
        frame = read_frame(in_stream)
        if frame is None:
            return
        request = decode_request(frame)
        if request.cancel:
            # The request is not in flight: it was answered before this was read.
            continue
        if request.request_id == 0:
            response = Response()  # The health check.
        else:
            response = _run(handler, request)
            response.request_id = request.request_id
            response.was_cancelled = False
        write_frame(out_stream, encode_response(response))
