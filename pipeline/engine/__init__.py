"""Training and inference on tensors: models, augmentation, normalisation, TTA, devices, the training loop (torch, no file I/O)."""
