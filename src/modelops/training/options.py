"""What `modelops train` takes: its options and their choices, without the training stack's imports (the CLI
builds its parser from these in every command, the model server's too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_BYTES = 1 << 30
"""Default download limit of `load_dataset` (1 GiB); the CLI flag is `--max-bytes`."""

ALGORITHMS = ("logreg", "random_forest", "gradient_boosting")
# rollout: evaluated like auto, but a winner over an existing champion becomes the challenger of a canary rollout
PROMOTE_MODES = ("auto", "always", "never", "rollout")


@dataclass(frozen=True)
class TrainOptions:
    """Everything one `modelops train` run needs."""

    tracking_uri: str
    model_name: str
    experiment: str
    alias: str
    algorithm: str = "logreg"
    params: list[str] = field(default_factory=list)
    data: str | None = None
    target: str = "target"
    test_size: float = 0.2
    seed: int = 42
    promote: str = "auto"
    metric: str = "roc_auc"
    wait_s: float = 120.0
    s3_endpoint_url: str | None = None
    git_commit: str | None = None
    signing_key_path: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    positive_class: str | None = None
    eval_data: str | None = None
    min_delta: float = 0.0
    thresholds: list[str] = field(default_factory=list)
    require_approval: bool = False
    image: str | None = None
    trigger: str | None = None
    challenger_alias: str = "challenger"
    rollout_steps: str = "5,25,50,100"
    rollout_interval_s: float = 60.0
