"""fermetric's built-in components: plugins like any other, registered through :mod:`fermetric.hookspecs`.

Each module here is one plugin (listed in ``fermetric.plugins.DEFAULT_PLUGINS``) and imports only the
contracts (:mod:`fermetric.contracts`, :mod:`fermetric.errors`), never the engine, the data pipeline or the CLI:
a third-party package can do everything a built-in does.
"""
