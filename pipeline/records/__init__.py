"""What runs leave on disk, each with one reader and writer: checkpoints, resume state, run manifests, submission history, the submission CSV."""
