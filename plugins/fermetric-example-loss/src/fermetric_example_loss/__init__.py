"""fermetric-example-loss: a focal loss for fermetric, and the template for publishing a loss plugin.

fermetric finds this module through the entry point in ``pyproject.toml``::

    [project.entry-points.fermetric]
    fermetric-example-loss = "fermetric_example_loss"

and calls the hook implementations below; each ``register(name, factory)`` adds one component that recipes
name (``[[loss]] name = "focal"``). Keep this module cheap to import: ``fermetric plugins`` and every run
import it.
"""

from importlib.metadata import PackageNotFoundError, version

import fermetric
from fermetric_example_loss.focal import FocalLoss

try:
    __version__ = version("fermetric-example-loss")
except PackageNotFoundError:  # imported from a source tree that was not pip-installed
    __version__ = "0+unknown"


@fermetric.hookimpl
def register_losses(register):
    register("focal", FocalLoss)


__all__ = ["FocalLoss", "register_losses", "__version__"]
