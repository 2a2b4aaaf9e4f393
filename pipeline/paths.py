"""Where each stage reads and writes, relative to the project root (dvc.yaml names the same paths)."""

from __future__ import annotations

from pathlib import Path

# check: a file of fixed text that prepare depends on, so DVC checks params before any stage runs
PARAMS_CHECKED_PATH = Path("metrics/params_checked.txt")
INPUT_DIR = Path("data/input")  # yours: the competition's zip or files (never a DVC output)
RAW_DIR = Path("data/raw")  # fetch: cifar-10-batches-py/ and the custom test pickle
PREPARED_DIR = Path("data/prepared")  # prepare: train/val/custom_test .npz and dataset.json
CHECKPOINT_DIR = Path("models/checkpoints")  # train: epoch_NNNN.pt
BEST_PATH = Path("models/best.pt")  # select: a copy of the winning checkpoint
DISTILL_DIR = Path("models/distill")  # distill: round_N/ (teacher labels, student checkpoints)
FINAL_PATH = Path("models/final.pt")  # distill: the last student's winner (rounds 0: best.pt)
ENSEMBLE_DIR = Path("models/ensemble")  # `ensemble add`: other runs' best.pt, each `dvc add`ed
SUBMISSION_PATH = Path("submissions/latest.csv")  # predict
# predict: latest.csv's manifest, a DVC output, so a run's commit (an experiment's too) carries
# it; submit keeps a submitted run's copy as submissions/<run_id>.json
LATEST_MANIFEST_PATH = Path("submissions/latest.json")
# predict: <run_id>.csv beside latest.csv; submit: history.csv (git-tracked), one row per submission
HISTORY_PATH = Path("submissions/history.csv")

DATA_REPORT_PATH = Path("metrics/data.json")  # prepare: counts per class
TRAIN_LIVE_DIR = Path("metrics/train")  # train: dvclive's metrics.json and plots/
SELECT_METRICS_PATH = Path("metrics/select.json")
SELECT_CANDIDATES_PATH = Path("metrics/select_candidates.csv")
DISTILL_LIVE_DIR = Path("metrics/distill")  # distill: round_N/ dvclive metrics, like train's
DISTILL_METRICS_PATH = Path("metrics/distill.json")
PREDICT_METRICS_PATH = Path("metrics/predict.json")
PREDICT_DETAILS_PATH = Path(
    "metrics/predict_details.json"
)  # per class, adapt, distillation: not metrics
CLASS_SHARES_PATH = Path(
    "metrics/class_shares.csv"
)  # a DVC plot: training vs custom-test class shares
VAL_PREDICTIONS_PATH = Path("metrics/val_predictions.csv")  # predict: actual,predicted per image
VAL_PER_CLASS_PATH = Path("metrics/val_per_class.csv")  # predict: class,accuracy
PENDING_PATH = Path("submissions/pending_submission.json")  # submit: an attempt not yet confirmed
