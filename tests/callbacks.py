"""Callbacks the tests use as seams into the training loop (registered through a plugin, like any callback)."""

from __future__ import annotations

from contextlib import contextmanager

import fermetric
from fermetric.contracts import Callback


class KillAt(Callback):
    """While armed, raises KeyboardInterrupt at the end of epoch ``epoch`` (1-based), after the history row is written
    and before the checkpointer (always last) saves it: the worst moment for a resume to be exact. The switch lives
    outside the recipe, so that the resumed run's recipe is the one in the folder."""

    armed = False

    def __init__(self, epoch: int = 2):
        self.epoch = epoch

    def on_epoch_end(self, loop):
        if KillAt.armed and loop.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


@contextmanager
def armed():
    KillAt.armed = True
    try:
        yield
    finally:
        KillAt.armed = False


class TestCallbacksPlugin:
    @fermetric.hookimpl
    def register_callbacks(self, register):
        register("kill_at", KillAt)


def host_with_test_callbacks():
    from fermetric.plugins import PluginHost

    host = PluginHost(entry_points=False)
    host.add_plugin(TestCallbacksPlugin(), "test-callbacks")
    return host
