"""The commands around the pipeline: profile, submit, scores, reproduce, ensemble, experiments."""
