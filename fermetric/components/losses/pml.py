"""pytorch-metric-learning (PML) losses by recipe name (its distances and miners are in
:mod:`fermetric.components.distances` and :mod:`fermetric.components.miners`).

PML classes are registered as they are, so their own parameter names and defaults are the recipe's. The only
exceptions are the two whose constructors hide ``num_classes``/``embedding_size`` behind ``*args``: the engine
fills those two in only when the factory's signature names them, so they get a thin subclass that does.
"""

from pytorch_metric_learning import losses

from fermetric.errors import ParameterError  # noqa: F401 - re-exported for the losses


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
