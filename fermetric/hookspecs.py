"""The hooks a fermetric plugin can implement.

Every hook receives one argument, ``register``: call it once per component, ``register(name, factory)``
(optionally ``register(name, factory, example={...})``: parameters that build a working instance, used by the
smoke tests run over every registered component, for a factory with required parameters).
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

    ``factory(**params)`` returns a :class:`fermetric.contracts.FaceDataset` (class names, and one
    :class:`fermetric.contracts.Sample` per image with its label and, when known, its subject id).
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
    If the factory takes ``num_classes`` or ``embedding_size`` they are filled in from the model; a
    ``distance`` parameter receives a registered distance object (see ``register_distances``).
    A loss with learnable parameters (centres, proxies) gets its own optimizer group (``lr`` in its table).
    """


@hookspec
def register_samplers(register):
    """Register batch samplers: ``register("name", factory)``.

    ``factory(labels, batch_size, seed, **params)`` returns an iterable of index batches (a
    ``torch.utils.data.Sampler`` over lists of indices) that is re-iterated every epoch; ``len()`` is the
    number of batches per epoch. ``labels`` is a list of int class ids for the training set.
    """


@hookspec
def register_distances(register):
    """Register distances: ``register("name", factory)``.

    ``factory(**params)`` returns a pytorch-metric-learning ``BaseDistance`` (or anything with its interface:
    ``distance(embeddings) -> (B, B)`` matrix and ``is_inverted`` for similarities). Any component parameter
    named ``distance`` takes a registered distance by name or as a table; the component receives the object.
    """


@hookspec
def register_miners(register):
    """Register miners: ``register("name", factory)``.

    ``factory(**params)`` returns a pytorch-metric-learning ``BaseMiner``: ``miner(embeddings, labels)``
    returns an indices tuple. A ``[[loss]]`` table names one with ``miner = "name"`` (or a table), and the loss is
    then called as ``loss(embeddings, labels, indices_tuple=...)``.
    """


@hookspec
def register_callbacks(register):
    """Register training callbacks (loggers included): ``register("name", factory)``.

    ``factory(**params)`` returns a :class:`fermetric.contracts.Callback`; a recipe switches it on with a
    ``[[callback]]`` table (``name = "tensorboard"``). The loop calls its ``on_fit_start``, ``on_epoch_start``,
    ``on_batch_end``, ``on_epoch_end`` and ``on_fit_end`` methods with the loop, whose attributes are listed on
    :class:`~fermetric.contracts.Callback`. A callback with ``state_dict``/``load_state_dict`` is checkpointed
    and restored on ``--resume``.
    """


@hookspec
def register_face_detectors(register):
    """Register face detectors for pictures at inference: ``register("name", factory)``.

    ``factory(**params)`` returns a callable ``detector(gray) -> list[DetectedFace]``: every face in a grey uint8
    picture, largest first, each a :class:`fermetric.contracts.DetectedFace` (box, and 68 or 5 landmarks when it
    has them). ``fermetric predict --detect name --detector-param key=value`` (and ``load_model(detect=...,
    detector_params=...)``) use it; the trained model's crop decides how each face is aligned. A detector that
    needs model files takes their path as a parameter and fails at construction, naming it, when they are missing.
    """
