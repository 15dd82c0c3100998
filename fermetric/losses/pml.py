"""pytorch-metric-learning (PML) as fermetric sees it: its losses, distances and miners by recipe name.

PML classes are registered as they are, so their own parameter names and defaults are the recipe's. The only
exceptions are the two whose constructors hide ``num_classes``/``embedding_size`` behind ``*args``: the engine
fills those two in only when the factory's signature names them, so they get a thin subclass that does.
"""

from pytorch_metric_learning import distances, losses, miners

from fermetric.errors import RecipeError


class ParameterError(RecipeError, ValueError):
    """A recipe gives a loss, distance or miner a name or value that does not exist or cannot work.

    A RecipeError so the CLI prints it as a recipe mistake (exit 2); a ValueError for code calling us directly.
    """


def _unknown(kind: str, name: str, valid) -> ParameterError:
    return ParameterError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


# Distances by recipe name. Factories rather than instances: PML distances record statistics, so every loss
# or miner needs its own.
DISTANCES = {
    "cosine": lambda **kw: distances.CosineSimilarity(**kw),
    "euclidean": lambda **kw: distances.LpDistance(p=2, power=1, **kw),
    "squared_euclidean": lambda **kw: distances.LpDistance(p=2, power=2, **kw),
    # A dot product of L2-normalised vectors is the cosine; "dot" only means something unnormalised.
    "dot": lambda **kw: distances.DotProductSimilarity(**{"normalize_embeddings": False, **kw}),
}


def make_distance(name: str, **params) -> distances.BaseDistance:
    """A fresh PML distance object for ``name`` (a key of :data:`DISTANCES`); ``params`` go to its constructor."""
    try:
        factory = DISTANCES[name]
    except (KeyError, TypeError):
        raise _unknown("distance", name, DISTANCES) from None
    return factory(**params)


MINERS: dict[str, type] = {
    "triplet_margin": miners.TripletMarginMiner,
    "multi_similarity": miners.MultiSimilarityMiner,
    "batch_hard": miners.BatchHardMiner,
    "batch_easy_hard": miners.BatchEasyHardMiner,
    "pair_margin": miners.PairMarginMiner,
    "angular": miners.AngularMiner,
    "distance_weighted": miners.DistanceWeightedMiner,
    "hdc": miners.HDCMiner,
    "uniform_histogram": miners.UniformHistogramMiner,
}


def make_miner(name: str, **params) -> miners.BaseMiner:
    """A PML miner by recipe name; a string ``distance`` param is turned into a distance object first."""
    try:
        cls = MINERS[name]
    except (KeyError, TypeError):
        raise _unknown("miner", name, MINERS) from None
    if isinstance(params.get("distance"), str):
        params["distance"] = make_distance(params["distance"])
    return cls(**params)


class CosFaceLoss(losses.CosFaceLoss):
    """PML's CosFaceLoss with ``num_classes``/``embedding_size`` visible in the signature (see module doc)."""

    def __init__(self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64, **kwargs):
        super().__init__(num_classes=num_classes, embedding_size=embedding_size, margin=margin, scale=scale, **kwargs)


class SubCenterArcFaceLoss(losses.SubCenterArcFaceLoss):
    """PML's SubCenterArcFaceLoss with ``num_classes``/``embedding_size`` visible in the signature."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64,
        sub_centers: int = 3,
        **kwargs,
    ):
        super().__init__(
            num_classes=num_classes,
            embedding_size=embedding_size,
            margin=margin,
            scale=scale,
            sub_centers=sub_centers,
            **kwargs,
        )


# Supervised PML losses that work as ``loss(embeddings, labels)`` on an ordinary labelled batch. Left out on
# purpose: self-supervised ones (VICReg, SelfSupervisedLoss), wrappers (CrossBatchMemory, MultipleLosses),
# those with required parameters that have no sensible default (RankedList, Manifold) and SmoothAP, which
# needs every batch to hold exactly the same number of samples per class.
PML_LOSSES: dict[str, type] = {
    "triplet": losses.TripletMarginLoss,
    "contrastive": losses.ContrastiveLoss,
    "multi_similarity": losses.MultiSimilarityLoss,
    "supcon": losses.SupConLoss,
    "npair": losses.NPairsLoss,
    "ntxent": losses.NTXentLoss,
    "circle": losses.CircleLoss,
    "lifted_structure": losses.LiftedStructureLoss,
    "generalized_lifted_structure": losses.GeneralizedLiftedStructureLoss,
    "margin": losses.MarginLoss,
    "angular": losses.AngularLoss,
    "tuplet_margin": losses.TupletMarginLoss,
    "nca": losses.NCALoss,
    "fast_ap": losses.FastAPLoss,
    "snr_contrastive": losses.SignalToNoiseRatioContrastiveLoss,
    "intra_pair_variance": losses.IntraPairVarianceLoss,
    "instance": losses.InstanceLoss,
    # Classification-style metric losses: learnable class weights/proxies of shape (embedding_size, classes).
    "arcface": losses.ArcFaceLoss,
    "cosface": CosFaceLoss,
    "sub_center_arcface": SubCenterArcFaceLoss,
    "sphereface": losses.SphereFaceLoss,
    "large_margin_softmax": losses.LargeMarginSoftmaxLoss,
    "normalized_softmax": losses.NormalizedSoftmaxLoss,
    "proxy_anchor": losses.ProxyAnchorLoss,
    "proxy_nca": losses.ProxyNCALoss,
    "soft_triple": losses.SoftTripleLoss,
}
