"""The losses as the engine sees them: registered through the hook, built from their signature, called on a batch."""

import inspect

import pluggy
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import BaseDistance
from pytorch_metric_learning.miners import BaseMiner

import fermetric
import fermetric.components.losses
from fermetric import hookspecs
from fermetric.errors import RecipeError
from fermetric.components.distances import DISTANCES, make_distance
from fermetric.components.losses import EMLF, CenterLoss, CrossEntropyLoss, IslandLoss
from fermetric.components.miners import MINERS, make_miner

NUM_CLASSES, EMBEDDING_SIZE = 7, 16


@pytest.fixture(autouse=True)
def _one_thread():
    # Tensors here are tiny: extra intra-op threads only fight over the shared CPUs (10x slower under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _registered_losses() -> dict:
    pm = pluggy.PluginManager("fermetric")
    pm.add_hookspecs(hookspecs)
    pm.register(fermetric.components.losses)
    registered = {}
    pm.hook.register_losses(register=registered.__setitem__)
    return registered


REGISTERED = _registered_losses()


def _build(name):
    """Built as the engine builds it (fermetric.build.build): num_classes/embedding_size filled in on request."""
    from fermetric.build import build
    from fermetric.plugins import get_host

    return build(get_host(), "loss", {"name": name}, num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE)[0]


def _batch(seed=0, batch_size=28, width=EMBEDDING_SIZE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, width, generator=g, requires_grad=True)
    y = torch.arange(batch_size) % NUM_CLASSES
    return x, y


def test_registered_names():
    ours = {"cross_entropy", "emlf", "center", "island"}
    required_pml = {"triplet", "contrastive", "multi_similarity", "arcface", "cosface", "supcon", "npair"}
    assert ours | required_pml <= set(REGISTERED)


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_forward_backward_gives_finite_scalar(name):
    torch.manual_seed(0)
    loss = _build(name)
    uses_logits = getattr(loss, "uses_logits", False)
    x, y = _batch(width=NUM_CLASSES if uses_logits else EMBEDDING_SIZE)
    value = loss(x, y)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.isfinite(x.grad).all()
    for p in loss.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ["cross_entropy", "emlf", "center", "island"])
def test_our_factories_declare_typed_defaulted_parameters(name):
    # The recipe validator reads the signature: every parameter needs a type, and a default unless the
    # engine fills it in.
    for p in inspect.signature(REGISTERED[name]).parameters.values():
        assert p.annotation is not inspect.Parameter.empty, p.name
        assert p.default is not inspect.Parameter.empty or p.name in ("num_classes", "embedding_size"), p.name


def test_cross_entropy_uses_logits_and_matches_torch():
    logits, y = _batch(width=NUM_CLASSES)
    weights = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.7]
    loss = CrossEntropyLoss(label_smoothing=0.1, class_weights=weights, num_classes=NUM_CLASSES)
    assert loss.uses_logits
    expected = F.cross_entropy(logits, y, weight=torch.tensor(weights), label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, y), expected)
    torch.testing.assert_close(CrossEntropyLoss(label_smoothing=0.2)(logits, y), F.cross_entropy(logits, y, label_smoothing=0.2))
    assert "class_weights" not in loss.state_dict()  # comes from the recipe, not the checkpoint


def test_cross_entropy_rejects_weights_of_the_wrong_length():
    with pytest.raises(RecipeError, match="3 values but the model has 7"):
        CrossEntropyLoss(class_weights=[1.0, 1.0, 1.0], num_classes=7)


def _intra_inter_ratio(x, y):
    d = torch.cdist(F.normalize(x, dim=1), F.normalize(x, dim=1))
    same = y[:, None] == y[None, :]
    off_diagonal = ~torch.eye(len(y), dtype=torch.bool)
    return (d[same & off_diagonal].mean() / d[~same].mean()).item()


@pytest.mark.parametrize("variant", ["mean", "hard"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_emlf_training_separates_expressions(variant, distance):
    torch.manual_seed(0)
    # Toy problem: free embeddings, drawn close together so that every pair starts inside the margins.
    x = torch.nn.Parameter(torch.randn(1, 8) + 0.3 * torch.randn(42, 8))
    y = torch.arange(42) % NUM_CLASSES
    loss = EMLF(variant=variant, distance=make_distance(distance))
    optimizer = torch.optim.Adam([x], lr=0.05)
    first, ratio_before = loss(x, y).item(), _intra_inter_ratio(x.detach(), y)
    for _ in range(40):
        optimizer.zero_grad()
        loss(x, y).backward()
        optimizer.step()
    assert loss(x, y).item() < 0.5 * first
    assert _intra_inter_ratio(x.detach(), y) < 0.5 * ratio_before


@pytest.mark.parametrize("name", ["emlf", "contrastive", "triplet"])
def test_engine_style_call_with_a_miner(name):
    x, y = _batch()
    loss = _build(name)
    value = loss(x, y, indices_tuple=make_miner("batch_hard")(x, y))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("factory", [CenterLoss, IslandLoss])
def test_centres_are_parameters_that_move(factory):
    torch.manual_seed(0)
    loss = factory(num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE)
    assert [n for n, _ in loss.named_parameters()] == ["centers"]
    assert loss.centers.shape == (NUM_CLASSES, EMBEDDING_SIZE)
    before = loss.centers.detach().clone()
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    x, y = _batch()
    loss(x.detach(), y).backward()
    optimizer.step()
    assert not torch.allclose(before, loss.centers.detach())


def test_center_loss_formula():
    torch.manual_seed(0)
    loss = CenterLoss(num_classes=NUM_CLASSES, embedding_size=EMBEDDING_SIZE)
    x, y = _batch()
    expected = sum(0.5 * ((x[i] - loss.centers[y[i]]) ** 2).sum() for i in range(len(y))) / len(y)
    torch.testing.assert_close(loss(x, y), expected)


def test_island_loss_adds_the_centre_similarity_penalty():
    torch.manual_seed(0)
    island = IslandLoss(num_classes=3, embedding_size=4, lambda1=2.0)
    c = island.centers.detach()
    penalty = sum(
        F.cosine_similarity(c[j], c[k], dim=0) + 1 for j in range(3) for k in range(3) if j != k
    )
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    center_only = CenterLoss(num_classes=3, embedding_size=4)
    center_only.centers.data.copy_(c)
    torch.testing.assert_close(island(x, y), center_only(x, y) + 2.0 * penalty)
    # Gradient descent on the penalty alone spreads the centres apart.
    optimizer = torch.optim.SGD(island.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        island.island_term().backward()
        optimizer.step()
    assert island.island_term().item() < penalty.item()


@pytest.mark.parametrize("name", sorted(DISTANCES))
def test_make_distance(name):
    distance = make_distance(name)
    assert isinstance(distance, BaseDistance)
    assert make_distance(name) is not distance  # fresh objects: PML distances keep per-use statistics
    assert distance(torch.randn(5, 3)).shape == (5, 5)


@pytest.mark.parametrize("name", sorted(MINERS))
def test_make_miner(name):
    miner = make_miner(name)
    assert isinstance(miner, BaseMiner)
    x, y = _batch()
    indices = miner(x.detach(), y)
    assert isinstance(indices, tuple) and len(indices) in (3, 4)


def test_the_builder_turns_a_miners_distance_name_into_the_registered_object(host):
    from fermetric.build import build

    miner, _ = build(host, "miner", {"name": "triplet_margin", "margin": 0.1, "distance": "cosine"}, {"name"})
    assert type(miner.distance).__name__ == "CosineSimilarity" and miner.margin == 0.1
    loss, _ = build(host, "loss", {"name": "emlf", "distance": {"name": "squared_euclidean", "normalize_embeddings": False}})
    assert loss.distance_name == "squared_euclidean" and loss.distance.normalize_embeddings is False


@pytest.mark.parametrize(
    "call, valid",
    [(lambda: make_distance("manhattan"), DISTANCES), (lambda: make_miner("hardest"), MINERS)],
    ids=["distance", "miner"],
)
def test_unknown_names_raise_listing_the_valid_ones(call, valid):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, RecipeError)
    for name in valid:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "params",
    [{"variant": "semihard"}, {"distance": make_distance("dot")}, {"distance": "cosine"}, {"pos_margin": 1.0, "neg_margin": 0.5},
     {"push_weight": -1.0}],
)
def test_emlf_rejects_bad_parameters(params):
    with pytest.raises(ValueError):
        EMLF(**params)


@pytest.mark.parametrize("name", ["euclidean", "squared_euclidean", "cosine"])
def test_emlf_reads_its_distance_kind_from_the_object(name):
    from fermetric.components.losses.emlf import DEFAULT_NEG_MARGIN

    loss = EMLF(distance=make_distance(name))
    assert loss.distance_name == name and loss.neg_margin == DEFAULT_NEG_MARGIN[name]


@pytest.mark.parametrize("name", ["emlf", "center", "island"])
def test_our_metric_losses_compute_in_float32_under_amp(name):
    x, y = _batch()
    loss = _build(name)
    expected = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(x.bfloat16(), y)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=2e-2, atol=1e-3)


def test_emlf_pull_is_a_batch_centroid_centre_loss():
    # docs/method.md: with euclidean distance and pos_margin 0, an expression's mean pull is 2n/(n-1) times
    # the mean squared distance of its n images to their batch centroid.
    x = torch.randn(6, 5, dtype=torch.float64)
    z = F.normalize(x, dim=1)
    n = len(z)
    expected = 2 * n / (n - 1) * (z - z.mean(dim=0)).pow(2).sum(dim=1).mean()
    torch.testing.assert_close(EMLF(push_weight=0.0)(x, torch.zeros(n, dtype=torch.long)), expected)
