"""The models, one file per family; registry.py says how a file adds one (`model.name`)."""
