"""Typed configuration: params.yaml → frozen dataclasses (params.py), how they are read, defaulted and overridden (load.py), and which stage reads which of them (stage_params.py)."""
