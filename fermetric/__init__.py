"""fermetric: facial expression recognition with partial images and deep metric learning.

Plugins (built-in ones included) implement the hooks in :mod:`fermetric.hookspecs` and mark them with
:data:`hookimpl`::

    import fermetric

    @fermetric.hookimpl
    def register_losses(register):
        register("my_loss", MyLoss)
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("fermetric")



def load_model(path, device: str = "auto", **kwargs):
    """A trained model from a run folder or a checkpoint file: ``.predict(inputs)``, ``.embed(inputs)``.

    Imported on first use, so that ``import fermetric`` (which every plugin does) stays light. Keyword arguments:
    ``fold`` (k-fold runs), ``detect`` (auto | none | a registered face detector: dlib, haar, a plugin's) and
    ``detector_params``; see :func:`fermetric.inference.load_model`.
    """
    from fermetric.inference import load_model as _load

    return _load(path, device=device, **kwargs)


__all__ = ["hookimpl", "load_model", "__version__"]
