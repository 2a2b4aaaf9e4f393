"""The outside tools the pipeline drives: the Kaggle API client, git and DVC."""
