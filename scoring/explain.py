"""Why a cell was called: integrated gradients by batched central finite differences.

Pathway level (every cell): attributions of the logit to the pathway layer. A Numba kernel lays
out the path points (baseline -> input, ``steps`` points of a quadrature rule), ONNX Runtime
evaluates the head's central differences at them in large batches, and a Numba reduction forms
the quadrature sum:

    IG_j = (p_j - b_j) * sum_k w_k * [f(b + a_k (p - b) + h e_j) - f(b + a_k (p - b) - h e_j)] / 2h

Bundles that ship ``head_fd.onnx`` get all differences of a point from that one small graph (points
it flags as near a ReLU kink are redone through ``head.onnx``); for the others, each point is
shifted ``±h`` along each pathway and ``head.onnx`` evaluates the 2P copies.

Completeness (sum_j IG_j == f(p) - f(b)) is checked per cell and reported as a relative gap.
Gene level (selected cells): the same through ``model.onnx``, perturbing only the genes whose
normalised value differs from the baseline.
"""

from dataclasses import dataclass

import numba
import numpy as np
import onnxruntime as ort

from scdr.scoring.errors import BundleError, ScdrError

RULES = ("left", "right", "midpoint", "trapezoid", "gauss-legendre")
BASELINES = ("zero", "bulk_mean", "single_cell_mean")
DEFAULT_STEPS = 16
DEFAULT_RULE = "gauss-legendre"
FD_STEP = 1e-3
GAP_FLOOR = 0.1  # logit units: below this |f(x) - f(b)|, the gap is measured against 0.1
SLOPE_TOLERANCE = 1e-2  # head_fd.onnx vs head.onnx differences, relative to the largest slope
_BATCH_VALUES = 8_000_000  # floats per ONNX Runtime call (32 MB of path points)
_SLOPE_POINTS = 8192  # path points per head_fd.onnx call: fewer calls, each waking ONNX Runtime once


@dataclass
class Attribution:
    """Attributions for a batch of cells, with the completeness check."""

    values: np.ndarray  # [n, n_features] float32
    logit: np.ndarray  # [n] f(input)
    baseline_logit: float  # f(baseline)
    gap: np.ndarray  # [n] |sum(values) - (f(x) - f(b))| / max(|f(x) - f(b)|, GAP_FLOOR)


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of a path-integral rule."""
    if steps < 1:
        raise ScdrError(f"--steps must be at least 1, got {steps}")
    k = np.arange(steps, dtype=np.float64)
    if rule == "left":
        return k / steps, np.full(steps, 1.0 / steps)
    if rule == "right":
        return (k + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "midpoint":
        return (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        if steps < 2:
            raise ScdrError("the trapezoid rule needs at least 2 steps")
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return k / (steps - 1), w
    if rule == "gauss-legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1) / 2, w / 2
    raise ScdrError(f"unknown integration rule '{rule}'; choose one of {', '.join(RULES)}")


def baseline_vector(card: dict, kind: str, n_features: int) -> np.ndarray:
    """The attribution baseline: zeros, or a reference pathway vector stored in the card."""
    if kind == "zero":
        return np.zeros(n_features, np.float32)
    if kind not in BASELINES:
        raise ScdrError(f"unknown baseline '{kind}'; choose one of {', '.join(BASELINES)}")
    ref = (card.get("reference_pathways") or {}).get(kind)
    if ref is None or len(ref) != n_features:
        raise ScdrError(f"this model's card has no '{kind}' reference; use --baseline zero")
    return np.asarray(ref, dtype=np.float32)


class IntegratedGradients:
    """Finite-difference integrated gradients of a graph's ``logit`` w.r.t. its single input;
    with ``slopes`` (a session of head_fd.onnx, whose step is ``h``), the differences come from
    it after a check that it agrees with ``session``."""

    def __init__(self, session: ort.InferenceSession, baseline: np.ndarray, steps: int = DEFAULT_STEPS,
                 rule: str = DEFAULT_RULE, h: float = FD_STEP,
                 slopes: ort.InferenceSession | None = None) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.baseline = np.ascontiguousarray(baseline, dtype=np.float32)
        self.alphas, self.weights = quadrature(rule, steps)
        self.h = float(h)
        self.baseline_logit = float(self._logit(self.baseline[None, :])[0])
        self.slopes = slopes
        if slopes is not None:
            self._check_slopes()

    def attribute(self, x: np.ndarray) -> Attribution:
        """Attributions over all features, for a batch ``x`` [n, n_features] (pathway level)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        values = np.zeros((n, d), np.float32)
        points = np.empty((n * len(self.alphas), d), np.float32)
        _path_points(x, self.baseline, self.alphas, points)
        slopes_at = self._head_differences if self.slopes is None else self._slopes
        slopes = np.empty(points.shape, np.float64 if self.slopes is None else np.float32)
        for lo in range(0, points.shape[0], _SLOPE_POINTS):
            slopes[lo : lo + _SLOPE_POINTS] = slopes_at(points[lo : lo + _SLOPE_POINTS])
        _reduce_slopes(slopes, x, self.baseline, self.weights, values)
        return self._checked(x, values)

    def attribute_features(self, x: np.ndarray) -> Attribution:
        """Attributions for one or a few cells, perturbing only features that differ from the
        baseline (gene level: the cost is 2 x steps x differing features graph evaluations)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        values = np.zeros((n, d), np.float32)
        m = len(self.alphas)
        for c in range(n):
            diff = np.flatnonzero(x[c] != self.baseline).astype(np.int64)
            block = max(1, _BATCH_VALUES // (2 * m * d))
            for lo in range(0, diff.size, block):
                feats = diff[lo : lo + block]
                points = np.empty((2 * m * feats.size, d), np.float32)
                _feature_points(x[c], self.baseline, self.alphas, np.float32(self.h), feats, points)
                f = self._logit(points)
                _reduce_features(f, x[c], self.baseline, self.weights, self.h, feats, values[c])
        return self._checked(x, values)

    def _checked(self, x: np.ndarray, values: np.ndarray) -> Attribution:
        logit = self._logit(x)
        delta = logit.astype(np.float64) - self.baseline_logit
        residual = np.abs(values.sum(axis=1, dtype=np.float64) - delta)
        gap = residual / np.maximum(np.abs(delta), GAP_FLOOR)
        return Attribution(values, logit, self.baseline_logit, gap.astype(np.float32))

    def _logit(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logit"], {self.input_name: x})[0].reshape(-1)

    def _slopes(self, points: np.ndarray) -> np.ndarray:
        """head_fd.onnx's differences at ``points``, those it does not call exact (a hidden unit
        near its ReLU kink) recomputed from head.onnx."""
        assert self.slopes is not None
        try:
            slopes, exact = self.slopes.run(["slopes", "exact"], {"pathways": points})
        except Exception as e:  # onnxruntime raises its own exception types
            raise BundleError(f"head_fd.onnx failed to run ({str(e).splitlines()[0][:200]})") from None
        slopes, exact = np.asarray(slopes), np.asarray(exact).reshape(-1)
        if slopes.shape != points.shape or exact.shape != (points.shape[0],) \
                or not np.all(np.isfinite(slopes)):
            raise BundleError(f"head_fd.onnx returned {slopes.shape} or non-finite slopes for "
                              f"{points.shape} points; the bundle is broken")
        redo = np.flatnonzero(~exact.astype(bool))
        if redo.size:
            slopes = np.array(slopes)
            slopes[redo] = self._head_differences(points[redo])
        return slopes

    def _head_differences(self, points: np.ndarray) -> np.ndarray:
        """Central differences of head.onnx along every feature: 2 x features evaluations per
        point."""
        n, d = points.shape
        out = np.empty((n, d), np.float64)
        per_call = max(1, _BATCH_VALUES // (2 * d * d))
        for lo in range(0, n, per_call):
            block = points[lo : lo + per_call]
            shifted = np.empty((2 * d * len(block), d), np.float32)
            _shifted_points(block, np.float32(self.h), shifted)
            f = self._logit(shifted).astype(np.float64).reshape(len(block), d, 2)
            out[lo : lo + per_call] = (f[:, :, 0] - f[:, :, 1]) / (2 * self.h)
        return out

    def _check_slopes(self) -> None:
        """head_fd.onnx must give the differences head.onnx gives (on the baseline and a few
        fixed points), or the bundle is refused: a fast explanation must be the same one."""
        d = self.baseline.shape[0]
        rng = np.random.default_rng(0)
        points = np.vstack([self.baseline, rng.standard_normal((7, d)).astype(np.float32)])
        want = self._head_differences(points)
        got = self._slopes(points).astype(np.float64)
        scale = max(float(np.abs(want).max()), 1e-3)
        if not np.allclose(got, want, rtol=0, atol=SLOPE_TOLERANCE * scale):
            raise BundleError(f"head_fd.onnx disagrees with head.onnx (max difference "
                              f"{float(np.abs(got - want).max()):.3g}); re-export the bundle")


@numba.njit(parallel=True, cache=True)
def _path_points(x, baseline, alphas, out):  # pragma: no cover
    n, d = x.shape
    m = alphas.shape[0]
    for c in numba.prange(n):
        for k in range(m):
            a = alphas[k]
            for i in range(d):
                out[c * m + k, i] = baseline[i] + a * (x[c, i] - baseline[i])


@numba.njit(parallel=True, cache=True)
def _shifted_points(points, h, out):  # pragma: no cover
    """Rows 2 d p + 2 j and 2 d p + 2 j + 1 of ``out``: point p with feature j moved by +h and -h
    (float32, as numpy's in-place add and subtract would)."""
    n, d = points.shape
    for p in numba.prange(n):
        for j in range(d):
            r = (p * d + j) * 2
            for i in range(d):
                out[r, i] = points[p, i]
                out[r + 1, i] = points[p, i]
            out[r, j] = points[p, j] + h
            out[r + 1, j] = points[p, j] - h


@numba.njit(parallel=True, cache=True)
def _reduce_slopes(slopes, x, baseline, weights, out):  # pragma: no cover
    n, d = x.shape
    m = weights.shape[0]
    for c in numba.prange(n):
        for j in range(d):
            s = 0.0
            for k in range(m):
                s += weights[k] * np.float64(slopes[c * m + k, j])
            out[c, j] = (x[c, j] - baseline[j]) * s


@numba.njit(parallel=True, cache=True)
def _feature_points(x, baseline, alphas, h, feats, out):  # pragma: no cover
    d = x.shape[0]
    m = alphas.shape[0]
    nf = feats.shape[0]
    for k in numba.prange(m):
        a = alphas[k]
        for t in range(nf):
            r = (k * nf + t) * 2
            for i in range(d):
                v = baseline[i] + a * (x[i] - baseline[i])
                out[r, i] = v
                out[r + 1, i] = v
            out[r, feats[t]] += h
            out[r + 1, feats[t]] -= h


@numba.njit(cache=True)
def _reduce_features(f, x, baseline, weights, h, feats, out):  # pragma: no cover
    m = weights.shape[0]
    nf = feats.shape[0]
    for t in range(nf):
        j = feats[t]
        s = 0.0
        for k in range(m):
            r = (k * nf + t) * 2
            s += weights[k] * (np.float64(f[r]) - np.float64(f[r + 1]))
        out[j] = (x[j] - baseline[j]) * s / (2.0 * h)
