"""Using a trained model: load it from its run folder or checkpoint, predict, embed, evaluate, export, explain.

    import fermetric

    model = fermetric.load_model("runs/quickstart")
    for face in model.predict(["photo.jpg", "frames/"]):
        print(face.source, face.box, face.label, face.confidence)

See docs/inference.md. The names below load on first use, so that the CLI (which registers this package's
commands) starts without importing torch.
"""

__all__ = ["FaceResult", "Model", "ModelLoadError", "load_model"]


def __getattr__(name: str):
    if name in ("FaceResult", "Model", "load_model"):
        from . import predict

        return getattr(predict, name)
    if name == "ModelLoadError":
        from .model import ModelLoadError

        return ModelLoadError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
