"""Multi-label classification (several labels per image): sigmoid outputs, binary cross-entropy, per-label
thresholds, and the metrics, figures and outputs that go with them. The data side is ``resnetlab.data.multilabel``.

    metrics, training, thresholds, predictions, evaluation, figures, explain, report: one concern per module;
    the shared verbs (train, evaluate, predict, explain, export, serve) dispatch here on ``ModelMeta.task``.
"""
