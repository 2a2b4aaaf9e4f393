"""Range checks for params and model configs, and the upper bounds they hold values to.

Each failed check is a `PipelineError` that names the key, what it must be, and what was found.
The bounds keep a typo from exhausting memory or time before anything useful happens
(`train.epochs: 1e30` once built a 23.6 GB set of checkpoint epochs); each is far above what a
CIFAR-10 run uses.
"""

from __future__ import annotations

from pipeline.errors import PipelineError

SEED_LIMIT = 2**32  # seeds are in [0, 2^32): what numpy's and torch's generators accept alike
MAX_EPOCHS = 10_000  # the longest published CIFAR-10 recipes run 1,800
MAX_BATCH_SIZE = 65_536  # images per batch; more than CIFAR-10's 60,000 images
MAX_MODEL_PARAMS = 100_000_000  # any budget, a teacher's too: 400 MB of float32 weights
MAX_CHANNELS = 4096  # channels of any one layer (model widths)
MAX_BLOCKS = 256  # residual blocks per stage


def require(condition: bool, key: str, expected: str, found: object) -> None:
    """`condition`, or an error: "params: KEY must be EXPECTED, found FOUND"."""
    if not condition:
        raise PipelineError(f"params: {key} must be {expected}, found {found!r}")


def require_range(value: float, key: str, low: float, high: float) -> None:
    """`low <= value <= high`, in words that name both ends."""
    require(low <= value <= high, key, f"in [{low:,}, {high:,}]", value)


def require_seed(value: int, key: str) -> None:
    require(0 <= value < SEED_LIMIT, key, "in [0, 2^32)", value)


def require_channels(values: list[int], key: str, count: int | None = None) -> None:
    """`count` channel counts (None: one per stage, 1 to 8), each in [1, MAX_CHANNELS]."""
    words = (
        {1: "one", 2: "two", 3: "three", 4: "four"}.get(count, str(count)) if count else "1 to 8"
    )
    length_ok = len(values) == count if count else 1 <= len(values) <= 8
    ok = length_ok and all(1 <= v <= MAX_CHANNELS for v in values)
    require(ok, key, f"{words} channel counts, each in [1, {MAX_CHANNELS}]", values)


def require_blocks(values: list[int], key: str) -> None:
    """Residual blocks per stage: 1 to 8 stages, each with 1 to MAX_BLOCKS blocks."""
    expected = f"1 to 8 block counts, each in [1, {MAX_BLOCKS}]"
    ok = 1 <= len(values) <= 8 and all(1 <= b <= MAX_BLOCKS for b in values)
    require(ok, key, expected, values)
