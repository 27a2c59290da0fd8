"""The `emolightning` command: one LightningCLI, plus `score` and `export`.

`fit`, `validate`, `test` and `predict` are Lightning's own subcommands with composable `--config`
files. The tokenizer follows the model's encoder and the label names follow the data: both are
linked here, so no config repeats them.
"""

from __future__ import annotations

import os
import sys

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .data import EmotionDataModule
from .errors import EmolightningError
from .model import EmotionClassifier


class EmotionCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.encoder", "data.tokenizer")
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/jaccard",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )


def run_cli(args: list[str] | None = None) -> EmotionCLI:
    return EmotionCLI(
        EmotionClassifier,
        EmotionDataModule,
        subclass_mode_model=True,
        seed_everything_default=42,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [LearningRateMonitor(logging_interval="step")]},
        args=args,
    )


def main(argv: list[str] | None = None) -> None:
    try:
        run_cli(argv)
    except EmolightningError as err:
        if os.environ.get("EMOLIGHTNING_TRACEBACK"):
            raise
        print(f"emolightning: error: {err}\n(Set EMOLIGHTNING_TRACEBACK=1 to see the traceback.)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
