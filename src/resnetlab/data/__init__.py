"""The data's path before the model: sources -> images -> decode-once cache -> batches with augmentation."""
