"""The CLI's argument parser: jsonargparse's, with one-paragraph errors and "did you mean ...?".

Option and config-file errors print `emolightning: error: ...` in one short paragraph and exit 2,
like the data errors, without jsonargparse's usage dump (run `--help` for that); a model's Union
error is cut down to the lines that say what is wrong. Abbreviated options (`--trainer.max_epoch`)
are refused, not silently expanded.

jsonargparse reports an unknown key as `unrecognized arguments: --trainer.max_epochz 1`, as
`... does not accept option 'max_epochz'` (in a config file) or, for the model's init args, as
`Option 'learnin_rate' is not accepted` inside a long Union message. `EmotionArgumentParser.error`
appends the closest valid key: from the parser's own keys, the init args of the model classes, and
a few names that users of the Hugging Face Trainer type by habit (`learning_rate`, `num_train_epochs`).
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys

from lightning.pytorch.cli import LightningArgumentParser

from .commands import PLAIN_COMMANDS, closest_command

# Hugging Face Trainer / argparse-script habits -> the emolightning key
ALIASES = {
    "learning_rate": "model.init_args.lr",
    "num_train_epochs": "trainer.max_epochs",
    "epochs": "trainer.max_epochs",
    "per_device_train_batch_size": "data.batch_size",
    "train_batch_size": "data.batch_size",
    "per_device_eval_batch_size": "data.eval_batch_size",
    "max_seq_length": "data.max_length",
    "model_name_or_path": "model.init_args.encoder",
    "gradient_accumulation_steps": "trainer.accumulate_grad_batches",
    "output_dir": "trainer.default_root_dir",
    "seed": "seed_everything",
}
# lines of a jsonargparse Union error that only restate its structure
NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: .*|Errors:|Given value type: .*|Given value: .*|- Expected a <class 'NoneType'>|Did you mean .*)$"
)


def model_keys() -> list[str]:
    """`model.init_args.<name>` for every argument of the model classes."""
    from ..inference.ensemble import EnsembleClassifier
    from ..models.classifier import EmotionClassifier
    from ..models.distill import EmotionDistiller  # the parser is built before the model classes are needed: import them late

    classes = [EmotionClassifier, EmotionDistiller, EnsembleClassifier]
    names = {n for c in classes for n in inspect.signature(c.__init__).parameters if n not in ("self", "args", "kwargs")}
    return ["model.class_path"] + [f"model.init_args.{n}" for n in sorted(names)]


def known_keys(parser) -> list[str]:
    """Every option key of `parser` and its subcommands' parsers (dotted, without dashes), and the groups they are in."""
    keys = []
    if (subcommands := getattr(parser, "subcommands_action", None)) is not None:  # the root parser: the subcommands hold the options
        for sub in subcommands.choices.values():
            keys += known_keys(sub)
    else:
        options = [key for key in parser.get_defaults(skip_validation=True).keys() if key != "config"]
        keys += options + [key.rsplit(".", 1)[0] for key in options if "." in key]
    if "model" in keys:
        keys += model_keys()
    return sorted(set(keys))


def unknown_keys(message: str) -> list[str]:
    """The option keys that an error message of jsonargparse names as not accepted."""
    found = []
    if m := re.search(r"unrecognized arguments: (.*)", message):
        found += [t.lstrip("-").split("=", 1)[0] for t in m.group(1).split() if t.startswith("--")]
    for group, option in re.findall(r"Group '([^']+)' does not accept option '([^']+)'", message):
        found.append(f"{group}.{option}")
    found += re.findall(r"Subcommand '[^']+' does not accept option '([^']+)'", message)
    parent = re.search(r'Parser key "([^"]+)"', message)
    for option in re.findall(r"Option '([^']+)' is not accepted", message):
        found.append(f"{parent.group(1)}.init_args.{option}" if parent and "." not in option else option)
    return found


def closest(unknown: str, keys: list[str]) -> str | None:
    """The valid key that `unknown` most likely meant, or None."""
    leaf = unknown.rsplit(".", 1)[-1]
    if alias := difflib.get_close_matches(leaf, list(ALIASES), n=1, cutoff=0.85):
        return ALIASES[alias[0]]
    if match := difflib.get_close_matches(unknown, keys, n=1, cutoff=0.8):
        return match[0]
    if same_leaf := [k for k in keys if k.rsplit(".", 1)[-1] == leaf]:  # --max_epochs -> trainer.max_epochs
        return same_leaf[0]
    group = unknown.rsplit(".", 1)[0] if "." in unknown else None
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys if group is None or k.startswith(group + ".")}
    match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
    return leaves[match[0]] if match else None


# the flat model options of 0.1, now components or grouped: where each went, said instead of a look-alike key
MOVED_MODEL_OPTIONS = {
    "pooling": "choose a head: `--model.init_args.head MeanPooling` (or ClsPooling, LabelAttentionPooling, LabelPromptPooling)",
    "dropout": "it is the head's: `--model.init_args.head.dropout 0.1`",
    "focal_gamma": "choose the loss: `--model.init_args.loss Focal --model.init_args.loss.gamma 2`",
    "asl_gamma_neg": "choose the loss: `--model.init_args.loss ASL --model.init_args.loss.gamma_neg 4`",
    "asl_gamma_pos": "choose the loss: `--model.init_args.loss ASL --model.init_args.loss.gamma_pos 0`",
    "asl_clip": "choose the loss: `--model.init_args.loss ASL --model.init_args.loss.clip 0.05`",
    "label_correlation_weight": "choose the loss: `--model.init_args.loss LabelCorrelationMix --model.init_args.loss.weight 0.2`",
    "rdrop_weight": "choose the loss: `--model.init_args.loss RDrop --model.init_args.loss.weight 1`",
    "pos_weight": "it is the loss's: `--model.init_args.loss.pos_weight auto` (BCE or Focal)",
    "layer_lr_decay": "choose the encoder's learning rates: `--model.init_args.encoder_groups LayerwiseLRDecay --model.init_args.encoder_groups.decay 0.8`",
    "ema_decay": "add Lightning's EMAWeightAveraging callback to `trainer.callbacks` (its init_args.decay, e.g. 0.999)",
    "threshold": "it is a threshold option: `--model.init_args.thresholds.threshold 0.5`",
    "tune_thresholds": "it is a threshold option: `--model.init_args.thresholds.tune false`",
    "threshold_strategy": "it is a threshold option: `--model.init_args.thresholds.strategy shrunk`",
    "threshold_shrinkage": "it is a threshold option: `--model.init_args.thresholds.shrinkage 50`",
    "min_label_positives": "it is a threshold option: `--model.init_args.thresholds.min_label_positives 10`",
}


def suggestion(message: str, parser) -> str:
    """' Did you mean ...?' lines for the unknown keys or subcommand in `message` ('' when none)."""
    if m := re.search(r"invalid choice: '([^']+)'", message):
        match = closest_command(m.group(1))
        return f"\nDid you mean `emolightning {match}`?" if match else ""
    unknown = unknown_keys(message)
    if not unknown:
        return ""
    keys = known_keys(parser)
    hints = []
    for key in unknown:
        leaf = key.rsplit(".", 1)[-1]
        if key.startswith("model.") and leaf in MOVED_MODEL_OPTIONS:
            hints.append(f"`{key}` is no longer an option of its own: {MOVED_MODEL_OPTIONS[leaf]}.")
        elif (match := closest(key, keys)) and match != key:
            hints.append(f"Did you mean `{match}` (`--{match}` on the command line) instead of `{key}`?")
    return "".join("\n" + h for h in hints)


def condensed(message: str, limit: int = 600) -> str:
    """A jsonargparse error message as one short paragraph: the lines that say what is wrong, joined."""
    lines = [line.strip() for line in message.strip().splitlines()]
    kept = [line.removeprefix("- ").removeprefix("Problem with given class_path ") for line in lines if line and not NOISE.match(line)]
    text = re.sub(r'Parser key "([^"]+)":', r"option `\1`:", " ".join(kept))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_config_file(argv: list[str]) -> str | None:
    """'FILE, line N: problem' for the first `--config` file of `argv` that is not valid YAML (jsonargparse's message names no file)."""
    import yaml

    paths = [b for a, b in zip(argv, argv[1:]) if a in ("-c", "--config")] + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except OSError:
            continue
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            return f"{path}{f', line {mark.line + 1}' if mark else ''}: {getattr(err, 'problem', None) or 'not valid YAML'}"
    return None


def add_plain_commands(parser) -> None:
    """List PLAIN_COMMANDS among the subcommands of `emolightning --help` (cli.main runs them before any parsing)."""
    from jsonargparse import ArgumentParser

    for name, text in PLAIN_COMMANDS.items():
        parser.subcommands_action.add_subcommand(name, ArgumentParser(description=text, prog=f"emolightning {name}"), help=text)


def error_parser(error: Exception | None, parser):
    """The parser that raised a jsonargparse error: the subcommand's, when jsonargparse recorded it on the error."""
    return getattr(error, "subcommand_parser", None) or parser


class EmotionArgumentParser(LightningArgumentParser):
    # the action `add_subcommands` returned (LightningCLI adds fit/validate/test/predict to it, add_plain_commands the rest),
    # kept because jsonargparse gives no public way back to it
    subcommands_action = None

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--trainer.max_epoch` must not train with max_epochs
        super().__init__(*args, **kwargs)

    def add_subcommands(self, *args, **kwargs):
        self.subcommands_action = super().add_subcommands(*args, **kwargs)
        return self.subcommands_action

    def error(self, message: str, ex: Exception | None = None):
        try:
            hint = suggestion(message, error_parser(ex, self))
        except Exception:  # a hint must never hide the error itself
            hint = ""
        if not self.exit_on_error:  # a nested parser: its caller reports the error
            return super().error(message + hint, ex)
        parser = error_parser(ex, self)
        prog = parser.prog.replace(" [options]", "")
        if "Problems parsing config" in message and (where := bad_config_file(sys.argv)):
            message = f"the config file {where}. Fix the YAML there."
        sys.stderr.write(f"emolightning: error: {condensed(message)}{hint}\n(`{prog} --help` lists every option.)\n")
        sys.exit(2)
