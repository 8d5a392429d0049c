"""Float columns as text, byte for byte what ``"%.6g" % float(value)`` writes, at Numba speed.

Formatting the pathway columns one Python float at a time cost three to four times the whole
scoring of a cell (``--pathways``: 55 values a row). The kernel here rounds each value to 6 significant digits
in float64 arithmetic, whose error (a few 1e-10 of the scaled value) can only matter when the
exact value lies within 1e-6 of a rounding tie; such values are flagged and their row is written
by Python's own formatting instead, so the text never differs from ``"%.6g"``.
"""

from __future__ import annotations

import numba
import numpy as np

FLOAT_FORMAT = "%.6g"
_WIDEST = 13  # "-1.23457e-38" and a delimiter (float32 exponents have two digits)
_TIE_MARGIN = 1e-6
_POW10 = np.array([10.0**k for k in range(-60, 61)])  # scale factors 10^(5 - e), float32's range


def format_column(values: np.ndarray) -> list[str]:
    """Each value of ``values`` [n] as ``%.6g`` text."""
    return format_rows(np.asarray(values).reshape(-1, 1), ",")


def format_rows(values: np.ndarray, delimiter: str) -> list[str]:
    """Each row of ``values`` [n, p] as its p ``%.6g`` numbers joined by ``delimiter`` (one
    character). Finite float32 takes the kernel; anything else Python's formatting."""
    values = np.asarray(values)
    if values.dtype != np.float32 or not np.isfinite(values).all():
        return [delimiter.join([FLOAT_FORMAT % v for v in row]) for row in values.tolist()]
    values = np.ascontiguousarray(values)
    n, p = values.shape
    if n == 0:
        return []
    if p == 0:
        return [""] * n
    text = np.empty(n * p * _WIDEST, np.uint8)
    ends = np.empty(n, np.int64)
    fallback = np.zeros(n, np.bool_)
    _write_rows(values, np.uint8(ord(delimiter)), text, ends, fallback)
    rows = text[: ends[-1]].tobytes().decode("ascii").split("\n")[:n]
    for i in np.flatnonzero(fallback).tolist():
        rows[i] = delimiter.join([FLOAT_FORMAT % v for v in values[i].tolist()])
    return rows


@numba.njit(parallel=True, cache=True)
def _write_rows(values, delimiter, out, ends, fallback):  # pragma: no cover
    """Rows of ``values`` into ``out`` as text, each ended by a newline at ``ends[i]``; rows
    with a value near a rounding tie are flagged in ``fallback``. Rows are written in parallel,
    each in its own slot of the widest size, then moved together."""
    n, p = values.shape
    width = p * _WIDEST
    for i in numba.prange(n):
        pos = i * width
        for j in range(p):
            if j > 0:
                out[pos] = delimiter
                pos += 1
            pos, exact = _write_g6(np.float64(values[i, j]), out, pos)
            if not exact:
                fallback[i] = True
        out[pos] = 10  # newline: rows are split on it
        ends[i] = pos + 1
    pos = 0
    for i in range(n):  # close the gaps between slots, in order
        start = i * width
        for k in range(start, ends[i]):
            out[pos + k - start] = out[k]
        pos += ends[i] - start
        ends[i] = pos


@numba.njit(cache=True, inline="always")
def _write_g6(x, out, pos):  # pragma: no cover
    """``%.6g`` of finite ``x`` at ``out[pos:]``; returns the new position and whether the
    rounding was clear of a tie (otherwise the caller formats the value another way)."""
    if x == 0.0:
        if np.signbit(x):
            out[pos] = 45  # '-'
            pos += 1
        out[pos] = 48
        return pos + 1, True
    if x < 0.0:
        out[pos] = 45
        pos += 1
        x = -x
    e = int(np.floor(np.log10(x)))
    scaled = x * _POW10[65 - e]
    while scaled < 1e5:
        e -= 1
        scaled = x * _POW10[65 - e]
    while scaled >= 1e6:
        e += 1
        scaled = x * _POW10[65 - e]
    digits = int(np.floor(scaled))
    frac = scaled - digits
    exact = abs(frac - 0.5) > _TIE_MARGIN
    if frac > 0.5:
        digits += 1
    if digits == 1000000:
        digits = 100000
        e += 1
    nsig = 6  # significant digits once trailing zeros are dropped
    while nsig > 1 and digits % 10 == 0:
        digits //= 10
        nsig -= 1
    if -4 <= e < 6:
        if e < 0:  # 0.000ddd
            out[pos] = 48
            out[pos + 1] = 46
            pos += 2
            for _ in range(-e - 1):
                out[pos] = 48
                pos += 1
            return _put_digits(digits, nsig, out, pos), exact
        end = _put_digits(digits, nsig, out, pos)
        if nsig <= e + 1:  # an integer: pad with the dropped zeros
            for _ in range(e + 1 - nsig):
                out[end] = 48
                end += 1
            return end, exact
        return _insert_point(out, pos + e + 1, end), exact
    end = _put_digits(digits, nsig, out, pos)
    pos = _insert_point(out, pos + 1, end) if nsig > 1 else end
    out[pos] = 101  # 'e'
    out[pos + 1] = 45 if e < 0 else 43
    pos += 2
    a = -e if e < 0 else e
    if a >= 100:
        out[pos] = 48 + a // 100
        pos += 1
    out[pos] = 48 + (a // 10) % 10
    out[pos + 1] = 48 + a % 10
    return pos + 2, exact


@numba.njit(cache=True, inline="always")
def _put_digits(v, n, out, pos):  # pragma: no cover
    """The ``n`` decimal digits of ``v`` at ``out[pos:]``; returns the position after them."""
    for k in range(n - 1, -1, -1):
        out[pos + k] = 48 + v % 10
        v //= 10
    return pos + n


@numba.njit(cache=True, inline="always")
def _insert_point(out, at, end):  # pragma: no cover
    """A decimal point at ``out[at]``, the text ``out[at:end]`` moved one place on."""
    for k in range(end, at, -1):
        out[k] = out[k - 1]
    out[at] = 46
    return end + 1
