"""The `emolightning` command: one LightningCLI, plus `score`, `export` and `report`.

`fit`, `validate`, `test` and `predict` are Lightning's own subcommands with composable `--config`
files. The tokenizer follows the model's encoder and the label names follow the data: both are
linked here, so no config repeats them.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..compat import LightningCLIWithHooks
from ..data.datamodule import EmotionDataModule
from ..errors import ConfigError, EmolightningError
from ..hardware import check_gpu, cpu_flags, faster_backend
from ..inference.backends import AUTO_BACKEND, FP32_HEAD_BACKENDS, Backend, InferenceBackend
from ..inference.ensemble import EnsembleClassifier, ensemble_config
from ..inference.manifest import is_manifest, read_manifest
from ..inference.prediction_writer import PredictionFileWriter
from ..models.checkpoints import check_checkpoint, label_names
from ..models.classifier import EmotionClassifier
from ..models.distill import data_teacher_tokenizer, resumed_distiller
from ..pretrained.encoders import skipped_weight_init
from ..training.best_checkpoint import BestCheckpoint, refuse_resume_without_training_state
from ..training.nan_guard import FiniteLossGuard
from ..training.record import BestValidationOutputs, KeepTestScores, RunClock
from ..training.resume import ExactResume, LastCheckpoint, RequeueSignal, StopRequested, refuse_stale_hpc_checkpoint, resolve_resume, use_atomic_checkpoint_io
from ..training.summary import ValHistory, closing_block, has_test_split
from ..training.tracking import SaveConfigToLogger, default_logger, local_logger_defaults, wandb_login_explained, wandb_save_dir_default
from ..training.trainer import EmotionTrainer, resolve_auto
from .parser import PLAIN_COMMANDS, EmotionArgumentParser, add_plain_commands
from .quiet import resuming, silence_libraries, tidy_callbacks, verbose_requested
from .standalone import EVALUATING, checkpoint_arguments


class EmotionCLI(LightningCLIWithHooks):
    resumed_model: dict | None = None  # `fit --ckpt_path` of a distillation: the distiller's model config (before_ckpt_path)
    auto_backend = False  # `predict --backend auto`, resolved in before_instantiate_classes and named in before_predict's log line

    def init_parser(self, **kwargs):
        parser = super().init_parser(**kwargs)
        from .. import __version__

        parser.add_argument("--version", action="version", version=f"emolightning {__version__}")
        return parser

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            for subcommand, parser in self.parser.subcommands_action.choices.items():  # fit, validate, test, predict
                self.add_subcommand_arguments(parser, subcommand)
            add_plain_commands(self.parser)

    def add_core_arguments_to_parser(self, parser) -> None:
        # LightningCLI's own, except that `model` may also be an EnsembleClassifier (not an EmotionClassifier
        # subclass), which `--ckpt_path ENSEMBLE.json` puts in place of the config's model (before_ckpt_path)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_subclass_arguments((EmotionClassifier, EnsembleClassifier), "model", fail_untyped=False, required=True)
        parser.add_lightning_class_args(self.datamodule_class, "data", subclass_mode=self.subclass_mode_data)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("model.init_args.encoder", "data.tokenizer")
        parser.link_arguments("seed_everything", "data.seed")
        parser.link_arguments("data.label_names", "model.init_args.label_names", apply_on="instantiate")
        parser.add_lightning_class_args(BestCheckpoint, "checkpoint")  # weights without the optimizer state (best_checkpoint.py)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/jaccard",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last.ckpt is last_checkpoint's (resume.py)
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")

    def instantiate_trainer(self, **kwargs):
        evaluating = self.subcommand in ("validate", "test", "predict")
        trainer_config = self.config_init[self.subcommand]["trainer"]
        if evaluating and trainer_config.get("logger") in (None, True):
            # the default logger would open a new version_N in the training run's folder, so the next
            # `fit` would not land where the README (and fit's closing block) said; test prints its scores
            # (and record.KeepTestScores keeps them beside the checkpoint)
            kwargs["logger"] = False
        elif trainer_config.get("logger") in (None, True):
            kwargs["logger"] = default_logger(trainer_config.get("default_root_dir"))  # CSV, not whatever is installed
        tidy_callbacks(trainer_config)  # read by super().instantiate_trainer
        trainer = super().instantiate_trainer(**kwargs)
        if evaluating:  # the run's config.yaml is saved already; none for an evaluation
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        use_atomic_checkpoint_io(trainer)  # a kill never leaves half a .ckpt under a checkpoint's name
        check_gpu(trainer.strategy.root_device, str(trainer.precision))  # no kernels for this GPU: say so before any work
        return trainer

    def after_fit(self) -> None:
        if self.trainer.fast_dev_run:  # Lightning saves no checkpoint and logs nothing then; no report either
            if self.trainer.is_global_zero:
                print("\nfast_dev_run: a check on a few batches; nothing was saved (no checkpoint, config or report).", flush=True)
            return
        if self.trainer.is_global_zero:
            from ..reporting.report import report_after_fit

            report = report_after_fit(self.trainer)  # the single-run report, named in the closing block
            history = next((c.history for c in self.trainer.callbacks if isinstance(c, ValHistory)), [])
            print("\n" + closing_block(self.trainer, history, report, test_split=has_test_split(self.datamodule)), flush=True)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        if self.subcommand == "predict":
            if config.get("backend") in (None, "auto"):
                config["backend"], self.auto_backend = AUTO_BACKEND, True
            if config["backend"] in FP32_HEAD_BACKENDS:  # their head runs in fp32: no autocast around it (backends.py)
                config["trainer"]["precision"] = "32-true"
        if config["trainer"].get("precision") in ("auto", None):
            # resolved here rather than in the Trainer, so that the run's config.yaml records what ran
            config["trainer"]["precision"] = resolve_auto(config["trainer"].get("accelerator") or "auto")
            rank_zero_info(f"trainer.precision auto: {config['trainer']['precision']} on this machine (`--trainer.precision 32-true` for full fp32)")
        # a WandbLogger without save_dir writes under trainer.default_root_dir (tracking.py)
        wandb_save_dir_default(config)
        local_logger_defaults(config)  # save_dir "" of configs/logger/tensorboard.yaml
        if self.subcommand == "fit":
            link_teacher_tokenizer(config)

    def instantiate_classes(self) -> None:
        ckpt = self.config[self.subcommand].get("ckpt_path") if self.subcommand in ("validate", "test", "predict") else None
        # every weight comes from the checkpoint: initialising them first is wasted time
        with skipped_weight_init() if ckpt and os.path.isfile(ckpt) else nullcontext():
            super().instantiate_classes()

    def add_subcommand_arguments(self, parser, subcommand: str) -> None:
        """Add options to one subcommand's parser (LightningCLI has no hook for that)."""
        # `predict` gets three options of its own
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="File for the predictions in the official E-c format (ID, Tweet, one 0/1 column per label at the checkpoint's tuned thresholds). Default: <trainer.default_root_dir>/predictions.txt.",
            )
            parser.add_argument("--probabilities", type=bool, default=False, help="Also write each label's probability, in columns p_<label>.")
            parser.add_argument(
                "--backend",
                type=Backend,
                default="auto",
                help="How the model runs: `auto` (the default: fp32, the exported model's labels), `fp32` (PyTorch in full fp32), `torch` (PyTorch at trainer.precision, e.g. the run's bf16-mixed: faster on a GPU, labels close to fp32's), `onnx` (ONNX Runtime, the fp32 labels; needs the [onnx] extra) or `bf16` (bfloat16 encoder weights: fastest on CPUs with AMX or AVX-512 BF16, labels close to but not identical with fp32's). docs/predict-and-export.md has the measured speeds and label agreement.",
            )

    def before_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if is_manifest(config.get("ckpt_path")):  # an ensemble (inference/ensemble.py): its model, and steps of a whole chunk of texts
            if subcommand == "fit":
                raise ConfigError(
                    f"--ckpt_path '{config.ckpt_path}' is an ensemble manifest, which `validate`, `test` and `predict` take; `fit --ckpt_path` "
                    "resumes one training checkpoint (a .ckpt or `last`). Train each member with `emolightning fit`."
                )
            manifest = read_manifest(config.ckpt_path)  # a missing or broken manifest stops here, named
            self.config = self.parser.parse_object({subcommand: ensemble_config(manifest, config["data"].eval_batch_size)}, self.config)
            self.config[subcommand].ckpt_path = None  # nothing for Lightning to load: the members are loaded by the ensemble
            return
        resolve_resume(subcommand, config)  # `--ckpt_path last` or a run folder: the checkpoint they stand for (resume.py)
        if subcommand == "fit" and config.get("ckpt_path"):
            resuming()
        refuse_stale_hpc_checkpoint(config)
        ckpt = config.get("ckpt_path")
        if not ckpt or not os.path.isfile(ckpt):
            return
        checkpoint = check_checkpoint(ckpt)  # a damaged or foreign file stops here, named, not in torch's zip reader
        if subcommand == "fit":
            refuse_resume_without_training_state(ckpt, checkpoint)
            self.resumed_model = resumed_distiller(checkpoint)
        data = config.get("data")
        if subcommand in EVALUATING and data is not None and not data.get("label_columns") and not data.get("labels_column"):
            # the checkpoint's labels: test and predict read their own split only, never the training files
            if names := label_names(checkpoint):
                data["label_names"] = names  # used only where no training split can be read (data.EmotionDataModule.label_names)

    def after_ckpt_path(self) -> None:
        # Lightning has put the checkpoint's hyperparameters in the config's model. A distillation's are its student's
        # (distill.py), which test and predict run as a plain EmotionClassifier; resuming its `fit` runs the distiller.
        if self.resumed_model is not None:
            self.config = self.parser.parse_object({"fit": {"model": self.resumed_model}}, self.config)

    def before_predict(self) -> None:
        config = self.config_init["predict"]
        ckpt = config.get("ckpt_path")
        if not isinstance(self.model, EnsembleClassifier) and (not ckpt or not os.path.isfile(ckpt)):
            raise ConfigError(
                f"`emolightning predict` needs --ckpt_path, a checkpoint written by `emolightning fit` (a .ckpt, or the run folder for its best checkpoint): {'it is not set' if not ckpt else repr(ckpt) + ' does not exist'}. Without one the head is untrained and the thresholds untuned."
            )
        output = config.get("output") or os.path.join(self.trainer.default_root_dir, "predictions.txt")
        # the data module's stream tells the writer how the input is chunked (set up when predict starts)
        data = self.datamodule
        self.trainer.callbacks.append(PredictionFileWriter(output, bool(config.get("probabilities")), layout=lambda: data.predict_stream))
        if isinstance(self.model, EnsembleClassifier):
            # the members are built chunk by chunk inside the ensemble, so there is no one encoder to swap
            if config.get("backend") not in ("fp32", "torch"):
                raise ConfigError(
                    f"`--backend {config['backend']}` swaps one model's encoder, but --ckpt_path is an ensemble manifest whose members run on "
                    "PyTorch. Leave --backend at auto (fp32), or give torch, for an ensemble, or predict with one member's checkpoint."
                )
        elif self.auto_backend:
            device = self.trainer.strategy.root_device.type
            faster = faster_backend(device, cpu_flags() if device == "cpu" else set())
            hint = f"; `--backend {faster}` is faster here, with labels close to but not always identical with fp32's" if faster else ""
            rank_zero_info(f"predict --backend auto: fp32, the numbers of the exported model{hint}")
        self.trainer.callbacks.append(InferenceBackend(config["backend"]))
        if config.get("return_predictions") is None:  # the writer keeps the rows; no second copy
            config["return_predictions"] = False


def link_teacher_tokenizer(config) -> None:
    """A distillation whose teacher tokenises unlike the student: the data also tokenises for the teacher (`data.teacher_tokenizer`,
    read from the teacher's checkpoint, where no link can reach; recorded in the run's config.yaml)."""
    model, data = config.get("model"), config.get("data")
    init_args = model.get("init_args") if model is not None else None
    if data is None or init_args is None or init_args.get("teacher") is None or not init_args.get("encoder"):
        return
    given = data.get("teacher_tokenizer")
    data["teacher_tokenizer"] = data_teacher_tokenizer(init_args["encoder"], init_args["teacher"], given)
    if data["teacher_tokenizer"] != given:
        rank_zero_info(f"data.teacher_tokenizer: {data['teacher_tokenizer']} (the teacher's own: it tokenises unlike the student's {init_args['encoder']})")


def run_cli(args: list[str] | None = None) -> EmotionCLI:
    return EmotionCLI(
        EmotionClassifier,
        EmotionDataModule,
        trainer_class=EmotionTrainer,  # precision auto; whole-sentence descriptions in --help
        subclass_mode_model=True,
        seed_everything_default=42,
        save_config_callback=SaveConfigToLogger,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "prog": "emolightning",
            "description": "Multi-label emotion classification (SemEval-2018 E-c and other multi-label sets). `emolightning SUBCOMMAND --help` lists a subcommand's options. Library messages that need no action are hidden: `--verbose` anywhere on the command line (or EMOLIGHTNING_VERBOSE=1) shows them.",
            "predict": {
                "description": "Label the predict split (data.predict_file, else data.predict_split) with the model of --ckpt_path at its tuned thresholds, and write an official E-c file (--output). --ckpt_path may also be an ensemble manifest (ENSEMBLE.json, written by `emolightning ensemble`): its members' probabilities are averaged and cut at the ensemble's own thresholds."
            },
        },
        trainer_defaults={
            "callbacks": [
                LearningRateMonitor(logging_interval="step"),
                ExactResume(),
                FiniteLossGuard(),
                RequeueSignal(),
                RunClock(),
                BestValidationOutputs(),
                KeepTestScores(),
                ValHistory(),
            ]
        },
        parser_class=EmotionArgumentParser,  # "did you mean ...?" for unknown options
        args=args,
    )


def main(argv: list[str] | None = None) -> None:
    verbose, args = verbose_requested(sys.argv[1:] if argv is None else argv)
    if argv is None:
        sys.argv[1:] = args  # LightningCLI reads sys.argv itself (and warns if also given args)
    else:
        argv = args
    if not verbose:
        silence_libraries()
    try:
        if args and args[0] in PLAIN_COMMANDS:  # no Trainer
            from .plain import run

            run(args[0], args[1:])
            return
        if (standalone := checkpoint_arguments(args)) is not args:  # a checkpoint without --config (standalone.py)
            if argv is None:
                sys.argv[1:] = standalone
            else:
                argv = standalone
        with wandb_login_explained():
            run_cli(argv)  # None: LightningCLI reads sys.argv itself (and warns if given both)
    except SIGTERMException as stop:  # a SystemExit: left alone, a preempted run would exit with status 0
        what = "SIGUSR1 (the requeue signal)" if isinstance(stop, StopRequested) else "SIGTERM"
        print(f"emolightning: stopped by {what}. A `fit` saved its state in last.ckpt first: resume it with `--ckpt_path last`.", file=sys.stderr)
        sys.exit(143)
    except Exception as exc:
        # jsonargparse re-raises what a model's __init__ raised as a ValueError ("Does not validate
        # against any of the Union subtypes"), chained to it: find the user error in the chain
        err = exc
        while err is not None and not isinstance(err, EmolightningError):
            err = err.__cause__ or err.__context__
        if err is None or os.environ.get("EMOLIGHTNING_TRACEBACK"):
            raise
        message = " ".join(str(err).split())  # one paragraph, whatever a message quotes
        if len(message) > 1500:  # messages cut what they quote; this bounds anything they missed
            message = message[:1450] + " [...] " + message[-45:]
        print(f"emolightning: error: {message}\n(Set EMOLIGHTNING_TRACEBACK=1 to see the traceback.)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
