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

__all__ = ["hookimpl", "__version__"]
