"""The hooks a fermetric plugin can implement.

Every hook receives one argument, ``register``: call it once per component, ``register(name, factory)``.
``factory(**params)`` builds the component from the parameters of the recipe table that names it, so its
signature *is* the component's parameter list: ``fermetric plugins`` shows it and recipes are validated
against it (names, and types taken from annotations or defaults).

fermetric's own components are registered through these same hooks (see ``DEFAULT_PLUGINS`` in
:mod:`fermetric.plugins`); third-party packages are found through the entry-point group ``fermetric``.
The contracts of each kind of component are in ``docs/hooks.md`` and ``docs/plugins.md``.
"""

import pluggy

hookspec = pluggy.HookspecMarker("fermetric")


@hookspec
def register_datasets(register):
    """Register datasets: ``register("name", factory)``.

    ``factory(**params)`` returns a :class:`fermetric.datasets.FaceDataset` (class names, and one
    :class:`fermetric.datasets.Sample` per image with its label and, when known, its subject id).
    """


@hookspec
def register_croppers(register):
    """Register croppers: ``register("name", factory)``.

    ``factory(**params)`` returns an object with ``output_size`` ((height, width) of every crop) that is
    called as ``cropper(face: FaceImage) -> np.ndarray`` (uint8, ``output_size``) and raises
    :class:`fermetric.errors.NoFace` when it finds no face or no landmarks.
    """


@hookspec
def register_backbones(register):
    """Register backbones: ``register("name", factory)``.

    ``factory(in_chans=..., **params)`` returns a ``torch.nn.Module`` with an int attribute
    ``num_features`` whose ``forward(x)`` maps ``(B, in_chans, H, W)`` to pooled features
    ``(B, num_features)``: timm's ``num_classes=0`` convention.
    """


@hookspec
def register_losses(register):
    """Register losses: ``register("name", factory)``.

    ``factory(**params)`` returns a ``torch.nn.Module`` called as ``loss(embeddings, labels)`` that returns
    a scalar tensor: pytorch-metric-learning's convention, so its loss classes register as they are.
    A loss that wants the classifier's logits instead sets the class attribute ``uses_logits = True``.
    If the factory takes ``num_classes`` or ``embedding_size`` they are filled in from the model.
    A loss with learnable parameters (centres, proxies) gets its own optimizer group (``lr`` in its table).
    """


@hookspec
def register_samplers(register):
    """Register batch samplers: ``register("name", factory)``.

    ``factory(labels, batch_size, seed, **params)`` returns an iterable of index batches (a
    ``torch.utils.data.Sampler`` over lists of indices) that is re-iterated every epoch; ``len()`` is the
    number of batches per epoch. ``labels`` is a list of int class ids for the training set.
    """
