"""How the decision thresholds are set: `model.init_args.thresholds`, one typed group of options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import ConfigError


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds: a fixed one before tuning, and how they are tuned on the validation split.

    Args:
        threshold: Decision threshold before tuning, used by `val/*` metrics.
        tune: After each validation epoch in fit, choose the thresholds on it (`strategy`).
        strategy: `fixed` (`threshold` for every label), `global` (one tuned threshold),
            `per_label` (each label its own), `shrunk` (each label's pulled toward the global one,
            the more the fewer validation positives it has: see metrics.choose_thresholds),
            `balanced` (as `shrunk`, each label's own cut chosen for Jaccard + macro-F1: higher
            macro-F1, slightly lower Jaccard).
        shrinkage: `shrunk` and `balanced`: the number of positives at which a label's own
            threshold and the global one count equally.
        min_label_positives: Labels with fewer validation positives keep the global threshold.
    """

    threshold: float = 0.5
    tune: bool = True
    strategy: Literal["fixed", "global", "per_label", "shrunk", "balanced"] = "per_label"
    shrinkage: float = 50.0
    min_label_positives: int = 10


def as_thresholds(value: Thresholds | dict | None) -> Thresholds:
    """`value` (a Thresholds, its dict as stored in a checkpoint, or None for the defaults) as a Thresholds."""
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    try:
        return Thresholds(**value)
    except TypeError as err:
        raise ConfigError(f"`model.init_args.thresholds` is {value!r}: {err}. Its keys are {list(asdict(Thresholds()))}.") from None


def checkpoint_thresholds(hparams: dict) -> Thresholds:
    """The threshold settings stored in a checkpoint's `hyper_parameters`."""
    return as_thresholds(hparams.get("thresholds"))
