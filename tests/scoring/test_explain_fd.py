"""head_fd.onnx: the head's finite differences in one graph must give the attributions that
2P evaluations of head.onnx per point give, and a bundle whose two graphs disagree is refused."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from helpers import EXAMPLE

from scdr.scoring import score
from scdr.scoring.bundle import FD_FILE, find_bundle, load_bundle
from scdr.scoring.engine import ExplainSettings
from scdr.scoring.errors import BundleError
from scdr.scoring.explain import IntegratedGradients
from scdr.scoring.inference import make_session


@pytest.fixture(scope="module")
def cisplatin():
    return load_bundle(find_bundle("cisplatin"))


@pytest.fixture(scope="module")
def real_pathways(cisplatin):
    return score(EXAMPLE, model=cisplatin.path).pathways[:120]


def test_every_shipped_bundle_has_a_head_fd_graph():
    from scdr.scoring.bundle import list_bundles

    bundles = [load_bundle(p) for p, _ in list_bundles()]
    assert len(bundles) >= 12
    assert all(b.fd_bytes is not None and b.fd_step == 1e-3 for b in bundles)


@pytest.mark.parametrize("steps,rule", [(16, "gauss-legendre"), (5, "trapezoid")])
def test_graph_and_black_box_differences_give_the_same_attributions(cisplatin, real_pathways,
                                                                     steps, rule):
    base = np.zeros(len(cisplatin.pathway_names), np.float32)
    head = make_session(cisplatin.head_bytes)
    fast = IntegratedGradients(head, base, steps, rule, h=cisplatin.fd_step,
                               slopes=make_session(cisplatin.fd_bytes)).attribute(real_pathways)
    slow = IntegratedGradients(head, base, steps, rule, h=cisplatin.fd_step).attribute(real_pathways)
    # the same differences, summed in another order in float32: 1e-3 of the largest attribution
    scale = np.abs(slow.values).max()
    assert np.abs(fast.values - slow.values).max() <= 1e-3 * scale
    np.testing.assert_allclose(fast.gap, slow.gap, atol=2e-3)


def test_engine_explains_every_plate_cell_through_head_fd(cisplatin):
    from scdr.scoring.engine import ReadOptions, prepare_run
    from scdr.scoring.reader import open_counts

    with open_counts(EXAMPLE) as src:
        run = prepare_run(cisplatin, src, ReadOptions(device="cpu"), ExplainSettings())
    assert run.explainer is not None and run.explainer.slopes is not None
    assert run.explainer.h == cisplatin.fd_step
    table = score(EXAMPLE, model=cisplatin.path, explain=ExplainSettings())
    assert table.attributions is not None and table.attributions.shape == table.pathways.shape
    # completeness holds for every cell of the plate
    assert float(np.max(table.ig_gap)) < 0.1


def test_head_fd_of_another_model_is_refused(cisplatin, tmp_path):
    root = tmp_path / "cisplatin"
    shutil.copytree(cisplatin.path, root)
    n = len(cisplatin.pathway_names)
    other = next(b.path / FD_FILE for b in map(load_bundle, map(find_bundle, ("afatinib", "docetaxel",
                 "sorafenib", "plx-4720", "crizotinib"))) if len(b.pathway_names) == n)  # another model
    shutil.copy(other, root / FD_FILE)
    card = json.loads((root / "card.json").read_text())
    card["files"][FD_FILE]["sha256"] = hashlib.sha256((root / FD_FILE).read_bytes()).hexdigest()
    (root / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match=r"disagrees with head\.onnx"):
        score(EXAMPLE, model=root, explain=ExplainSettings())


@pytest.mark.parametrize("step", [None, 0, 0.5, "0.001"])
def test_head_fd_needs_a_sane_step(cisplatin, tmp_path, step):
    root = tmp_path / "cisplatin"
    shutil.copytree(cisplatin.path, root)
    card = json.loads((root / "card.json").read_text())
    card["files"][FD_FILE]["fd_step"] = step
    (root / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="fd_step"):
        load_bundle(root)


def test_fd_graph_equals_central_differences_of_a_deeper_head():
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from scdr.training.export import build_head_fd_graph

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).eval()
    h = 1e-3
    graph = ort.InferenceSession(build_head_fd_graph(head, 12, h).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    z = torch.randn(50, 12)
    got = graph.run(["slopes"], {"pathways": z.numpy()})[0]
    with torch.no_grad():
        eye = torch.eye(12) * h
        plus = head(z[:, None, :] + eye).squeeze(-1)
        minus = head(z[:, None, :] - eye).squeeze(-1)
    want = ((plus.double() - minus.double()) / (2 * h)).numpy()
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_kink_aware_graph_flags_points_near_a_kink_and_is_exact_elsewhere():
    """For Linear -> ReLU -> Linear heads the graph is one matrix product away from the kinks;
    a point with a hidden unit on its kink must come back as not exact."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from scdr.training.export import build_head_fd_graph

    torch.manual_seed(1)
    head = torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1)).eval()
    h = 1e-3
    graph = ort.InferenceSession(build_head_fd_graph(head, 10, h).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    z = torch.randn(200, 10)
    # put unit 0 of the last point exactly on its kink: W0 . z + b0 = 0
    w0, b0 = head[0].weight[0].detach(), head[0].bias[0].detach()
    z[-1] -= w0 * (w0 @ z[-1] + b0) / (w0 @ w0)
    slopes, exact = graph.run(["slopes", "exact"], {"pathways": z.numpy()})
    assert not exact[-1] and exact[:-1].mean() > 0.9
    with torch.no_grad():
        eye = torch.eye(10, dtype=torch.float64) * h
        head64 = head.double()
        z64 = z.double()
        want = ((head64(z64[:, None, :] + eye) - head64(z64[:, None, :] - eye)).squeeze(-1)
                / (2 * h)).numpy()
    ok = exact.astype(bool)
    assert np.abs(slopes[ok] - want[ok]).max() <= 1e-5 * np.abs(want).max()
