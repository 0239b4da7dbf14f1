"""resnetlab: train, evaluate, predict with and explain ResNet image classifiers on your own images.

    import resnetlab
    result = resnetlab.train(data="photos/", epochs=5)
    clf = resnetlab.load(result.best_checkpoint)
    clf.predict(["photos/cat/1.jpg"])[0].label
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["train", "load", "evaluate", "predict_files", "TrainConfig", "__version__"]


def __getattr__(name: str):
    # Lazy imports keep `resnetlab --help` fast: torch is loaded only when a verb needs it.
    if name == "train":
        from .training import train

        return train
    if name == "load":
        from .predict import load

        return load
    if name == "predict_files":
        from .predict import predict_files

        return predict_files
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    if name == "TrainConfig":
        from .config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'resnetlab' has no attribute {name!r}")
