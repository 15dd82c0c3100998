"""EMLF against a brute-force reference written with explicit loops over pairs.

The reference follows the formula of docs/method.md section 2 literally, one pair at a time, so that the
vectorised implementation (masks, matrix products) is checked against the definition, values and gradients.
"""

from collections import defaultdict

import pytest
import torch
from pytorch_metric_learning import miners

from fermetric.components.distances import make_distance
from fermetric.components.losses import EMLF
from fermetric.components.losses.emlf import DEFAULT_NEG_MARGIN


def _relu(v):
    return torch.clamp(v, min=0)


def _mean(values):
    return sum(values) / len(values)


def reference_emlf(
    x,
    y,
    *,
    pos_margin=0.0,
    neg_margin=None,
    distance="euclidean",
    normalize=True,
    variant="mean",
    pull_weight=1.0,
    push_weight=1.0,
    allowed_pos=None,
    allowed_neg=None,
):
    """EMLF by definition. ``allowed_pos``/``allowed_neg``: sets of (anchor, other) pairs a miner kept."""
    neg_margin = DEFAULT_NEG_MARGIN[distance] if neg_margin is None else neg_margin
    y = y.tolist()
    n = len(y)
    z = [x[i] / torch.linalg.vector_norm(x[i]) if normalize or distance == "cosine" else x[i] for i in range(n)]

    def d(i, j):
        if distance == "euclidean":
            return torch.linalg.vector_norm(z[i] - z[j])
        if distance == "squared_euclidean":
            return ((z[i] - z[j]) ** 2).sum()
        return 1 - (z[i] * z[j]).sum()

    pulls, pushes = defaultdict(list), defaultdict(list)
    for i in range(n):
        positives = [j for j in range(n) if j != i and y[j] == y[i]]
        negatives = [k for k in range(n) if y[k] != y[i]]
        if allowed_pos is not None:
            positives = [j for j in positives if (i, j) in allowed_pos]
            negatives = [k for k in negatives if (i, k) in allowed_neg]
        if positives:
            if variant == "mean":
                pull = _mean([_relu(d(i, j) - pos_margin) ** 2 for j in positives])
            else:
                pull = _relu(max(d(i, j) for j in positives) - pos_margin) ** 2
            pulls[y[i]].append(pull)
        if negatives:
            if variant == "mean":
                by_class = defaultdict(list)
                for k in negatives:
                    by_class[y[k]].append(_relu(neg_margin - d(i, k)) ** 2)
                push = _mean([_mean(v) for v in by_class.values()])
            else:
                push = _relu(neg_margin - min(d(i, k) for k in negatives)) ** 2
            pushes[y[i]].append(push)
    pull_term = _mean([_mean(v) for v in pulls.values()]) if pulls else torch.zeros((), dtype=x.dtype)
    push_term = _mean([_mean(v) for v in pushes.values()]) if pushes else torch.zeros((), dtype=x.dtype)
    return pull_weight * pull_term + push_weight * push_term


def _batch(seed, batch_size, embedding_size, num_classes):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, embedding_size, generator=g, dtype=torch.float64)
    # Unbalanced classes on purpose: the class-balanced averaging must match the definition.
    y = torch.randint(0, num_classes, (batch_size,), generator=g)
    return x, y


def _value_and_grad(fn, x, y, **kw):
    x = x.clone().requires_grad_(True)
    value = fn(x, y, **kw)
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return value.detach(), torch.zeros_like(x) if grad is None else grad


def emlf(distance="euclidean", normalize=True, **params):
    """EMLF as a recipe builds it: the distance is the registered distance object (normalised unless asked not to)."""
    options = {} if distance == "cosine" else {"normalize_embeddings": normalize}
    return EMLF(distance=make_distance(distance, **options), **params)


def _check(x, y, params, **forward_kw):
    value, grad = _value_and_grad(emlf(**params), x, y, **forward_kw)
    ref_value, ref_grad = _value_and_grad(lambda a, b: reference_emlf(a, b, **params, **_allowed(forward_kw, y)), x, y)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.isfinite(grad).all()


def _allowed(forward_kw, y):
    if "indices_tuple" not in forward_kw:
        return {}
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    a1, p, a2, n = lmu.convert_to_pairs(forward_kw["indices_tuple"], y)
    return {
        "allowed_pos": set(zip(a1.tolist(), p.tolist())),
        "allowed_neg": set(zip(a2.tolist(), n.tolist())),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(12, 4, 3), (20, 16, 5)], ids=["B12-D4-C3", "B20-D16-C5"])
@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_matches_reference(seed, shape, variant, distance):
    x, y = _batch(seed, *shape)
    _check(x, y, {"variant": variant, "distance": distance})


@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize(
    "params",
    [
        {"pos_margin": 0.3, "neg_margin": 1.3, "pull_weight": 0.5, "push_weight": 2.0},
        {"normalize": False, "neg_margin": 4.0},
        {"distance": "squared_euclidean", "normalize": False, "pos_margin": 1.0, "neg_margin": 12.0},
        {"distance": "cosine", "pos_margin": 0.1, "neg_margin": 0.9},
    ],
)
def test_matches_reference_with_margins_and_weights(variant, params):
    x, y = _batch(7, 16, 6, 4)
    _check(x, y, {"variant": variant, **params})


@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize(
    "miner",
    [miners.BatchHardMiner(), miners.TripletMarginMiner(margin=0.2), miners.PairMarginMiner(0.8, 1.0)],
    ids=["batch_hard", "triplet_margin", "pair_margin"],
)
def test_matches_reference_on_mined_pairs(variant, miner):
    x, y = _batch(3, 18, 5, 4)
    indices_tuple = miner(x, y)
    allowed = _allowed({"indices_tuple": indices_tuple}, y)
    # The miner must actually select: some pairs kept, not all of them.
    all_pairs = len(y) * (len(y) - 1)
    assert 0 < len(allowed["allowed_pos"]) + len(allowed["allowed_neg"]) < all_pairs
    _check(x, y, {"variant": variant}, indices_tuple=indices_tuple)


@pytest.mark.parametrize("variant", ["mean", "hard"])
def test_no_positive_pair_gives_push_term_only(variant):
    x, y = _batch(0, 6, 4, 6)
    y = torch.arange(6)  # every sample its own expression
    _check(x, y, {"variant": variant})
    pull_only, grad = _value_and_grad(emlf(variant=variant, push_weight=0.0), x, y)
    assert pull_only == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("variant", ["mean", "hard"])
def test_single_expression_gives_pull_term_only(variant):
    x, _ = _batch(0, 6, 4, 1)
    y = torch.zeros(6, dtype=torch.long)
    _check(x, y, {"variant": variant})
    push_only, grad = _value_and_grad(emlf(variant=variant, pull_weight=0.0), x, y)
    assert push_only == 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize("batch_size", [0, 1])
def test_empty_and_single_sample_batches_give_zero(variant, batch_size):
    x = torch.randn(batch_size, 4, dtype=torch.float64, requires_grad=True)
    value = emlf(variant=variant)(x, torch.zeros(batch_size, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_coincident_positives_have_finite_gradients(variant, distance):
    # The pull term succeeds exactly when positives coincide, where the derivative of a Euclidean
    # distance is 0/0: the gradient must stay finite there (and in float32, the training dtype).
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    value = emlf(variant=variant, distance=distance)(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()
