"""Every `emolightning ...` command in README.md and docs/*.md parses as written: its subcommand and option
names exist, its values have the right types and the repository files it names (`--config`) exist.

Parse only: Lightning's subcommands run with `--print_config`, the plain ones (score, export, ...) stop right
after argparse has read their arguments. Paths a user supplies (`path/to/...`, run folders) are not checked.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from emolightning.cli.main import main
from emolightning.cli.parser import PLAIN_COMMANDS

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S+)\s*$")
# a config written by a run (RUN/config.yaml): parse against a shipped config with a model instead
RUN_CONFIG = re.compile(r"(^|/)(runs|lightning_logs|version_\d+)/|^\$|RUN")
STAND_IN_CONFIG = "configs/quickstart.yaml"


def code_lines(text: str) -> list[str]:
    """The logical lines of every fenced block, `\\` continuations joined, comments dropped."""
    lines = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n", " ", block)
        lines += [line.split(" #")[0].strip() for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return [line for line in lines if line]


def commands(text: str) -> list[list[str]]:
    """The `emolightning` commands of a page as argument lists (without `emolightning`), shell variables expanded."""
    found, variables = [], {}
    for line in code_lines(text):
        if match := ASSIGNMENT.match(line):
            variables[match[1]] = match[2]
            continue
        for segment in re.split(r"&&|;|\|", line):
            # a loop variable (`for seed in 1 2 3`) stands for a number
            segment = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m[1], "1"), segment)
            segment = segment.replace("[", " ").replace("]", " ")  # `[--json]`: an optional option is still an option
            try:
                words = shlex.split(segment)
            except ValueError:
                continue
            if "emolightning" in words and words.index("emolightning") + 1 < len(words):
                args = words[words.index("emolightning") + 1 :]
                if args[0] in ("fit", "validate", "test", "predict", *PLAIN_COMMANDS):
                    found.append([w for w in args if w not in ("...", "…")])
    return found


def with_stand_ins(args: list[str]) -> list[str]:
    """A run's own config becomes a shipped one; a shipped config must exist."""
    out = list(args)
    for i, word in enumerate(out[:-1]):
        if word == "--config":
            if RUN_CONFIG.search(out[i + 1]):
                out[i + 1] = STAND_IN_CONFIG
            else:
                assert (REPO / out[i + 1]).is_file(), f"--config {out[i + 1]} does not exist in the repository"
                out[i + 1] = str(REPO / out[i + 1])
    return out


class Parsed(Exception):
    pass


def parse_code(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """The exit status of parsing `emolightning ARGS` (0: parsed), and what it printed on stderr."""
    capsys.readouterr()
    if args[0] in PLAIN_COMMANDS:
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(self, *a, **k):
            original(self, *a, **k)
            raise Parsed

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        try:
            main(args)
        except Parsed:
            return 0, ""
        except SystemExit as done:
            return done.code, capsys.readouterr().err
        finally:
            monkeypatch.undo()
        return 1, "ran past its argument parsing"
    with pytest.raises(SystemExit) as done:
        main([*args, "--print_config"])
    return done.value.code, capsys.readouterr().err


ALL = [(page.relative_to(REPO).as_posix(), args) for page in PAGES for args in commands(page.read_text())]


def test_the_pages_hold_commands():
    pages = {page for page, _ in ALL}
    assert len(ALL) >= 20 and "README.md" in pages and len(pages) >= 5, pages


def test_extraction_joins_continuations_splits_chains_and_expands_variables():
    text = "```bash\nRUN=runs/x\npip install x && emolightning fit --config a.yaml \\\n   --data.batch_size 4  # note\n"
    text += "emolightning score $RUN/pred.txt gold.txt [--json]\n```\n"
    assert commands(text) == [["fit", "--config", "a.yaml", "--data.batch_size", "4"], ["score", "runs/x/pred.txt", "gold.txt", "--json"]]


def test_every_documented_command_parses(capsys, monkeypatch):
    failures = []
    for page, args in ALL:
        try:
            code, err = parse_code(with_stand_ins(args), capsys, monkeypatch)
        except AssertionError as missing:
            code, err = 1, str(missing)
        if code != 0:
            failures.append(f"{page}: emolightning {shlex.join(args)}\n    {err.strip()[-400:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--config", "configs/quickstart.yaml", "--data.made_up_option", "1"],
        ["predict", "--config", "configs/quickstart.yaml", "--made_up_flag", "true"],
        ["score", "pred.txt", "gold.txt", "--made-up"],
        ["fit", "--config", "configs/no_such_config.yaml"],
    ],
)
def test_a_made_up_option_or_missing_config_is_caught(args, capsys, monkeypatch):
    try:
        code, _ = parse_code(with_stand_ins(args), capsys, monkeypatch)
    except AssertionError:
        code = 1
    assert code != 0


def section_of(page: Path, title: str) -> str:
    """One section of a page, from its `## title` to the next `## `."""
    return page.read_text(encoding="utf-8").split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def walkthrough(page: Path, title: str) -> list[list[str]]:
    """The `emolightning` commands of one section of a page, in order."""
    return commands(section_of(page, title))


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a text."""
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def served_answer(args: list[str], cwd: Path, env: dict, text: str) -> dict:
    """Start `emolightning serve ARGS` (on a free port instead of the documented one), POST `text` as the README's curl does, stop it."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [str(port) if i and args[i - 1] == "--port" else word for i, word in enumerate(args)]
    server = subprocess.Popen([sys.executable, "-m", "emolightning", *args], cwd=cwd, env={**os.environ, **env}, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/predict", data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=60) as answer:
                    return json.loads(answer.read())
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, f"serve exited ({server.poll()}) or did not answer in time"
                time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.slow
def test_the_readme_own_data_walkthrough_runs_as_written_on_a_csv_with_the_users_own_column_names(tiny_encoder, tmp_path):
    """README "Your own data", every command as written, on CSVs whose columns are the user's (msg_id, message, labels): only the
    user's paths become files here, and fit gets the tiny encoder, one short epoch and a cache in the test folder."""
    import csv
    import glob
    import json
    import subprocess
    import sys

    import pandas as pd

    from conftest import LABELS, make_rows
    from helpers import emolightning

    section = section_of(REPO / "README.md", "Your own data")
    steps = walkthrough(REPO / "README.md", "Your own data")
    assert [args[0] for args in steps][:2] == ["fit", "test"] and "score" in [args[0] for args in steps], steps
    (tmp_path / "configs").symlink_to(REPO / "configs")  # the user runs the commands in a checkout
    data = tmp_path / "data"
    data.mkdir()
    for name, rows, labelled in [("train", make_rows(40, 1, "r"), True), ("dev", make_rows(16, 2, "d"), True), ("test", make_rows(12, 3, "t"), True)] + [
        ("new", make_rows(6, 4, "n"), False)
    ]:
        with open(data / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["msg_id", "message", *(LABELS if labelled else [])])
            for k, (row_id, text, gold) in enumerate(rows):
                writer.writerow([row_id.replace("-", "_"), "" if name == "new" and k == 2 else text, *(gold if labelled else [])])
    tiny = ["--model.init_args.encoder", tiny_encoder, "--data.cache_dir", "cache", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"]
    quiet = ["--trainer.enable_progress_bar", "false"]
    outputs, served = {}, {}
    for args in steps:
        args = [word.replace("path/to/", f"{data}/") for word in args]
        args = [match for word in args for match in (sorted(glob.glob(str(tmp_path / word))) if "*" in word else [word])]
        if args[0] == "serve":  # a server runs until stopped: ask it once, as the README's curl does
            served = served_answer(args, tmp_path, {"PYTHONPATH": str(REPO)}, "what a wonderful day")
            continue
        extra = tiny + quiet if args[0] == "fit" else quiet if args[0] in ("test", "predict") else []
        done = emolightning(*args, *extra, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})
        outputs.setdefault(args[0], []).append(done.stdout + done.stderr)
    assert "test/jaccard" in outputs["test"][0]
    scored = outputs["score"][0]
    assert re.search(r"^n\s+12$", scored, re.M) and re.search(r"^jaccard\s+\d\.\d{4}$", scored, re.M), scored
    for path in tmp_path.glob("*predictions.csv"):  # a .csv that pandas reads: the user's columns, every row
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert list(frame.columns[:2]) == ["msg_id", "message"] and list(frame.columns[2:]) == LABELS
        assert len(frame) == (12 if path.name.startswith("test") else 6)
    assert "serve" in [args[0] for args in steps] and set(served) == {"labels", "probabilities"} and set(served["probabilities"]) == set(LABELS), served

    # the export snippet, as written, on a text far longer than the model's max_length: predict's labels and probabilities
    long_text = " ".join(["so delighted with my friend today but scared of the news"] * 300)
    (snippet,) = [block for block in python_blocks(section) if "pipeline(" in block]
    assert '"a text of any length"' in snippet
    script = snippet.replace('"a text of any length"', repr(long_text)) + "\nimport json, sys\njson.dump(scores, sys.stdout)\n"
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    exported = {entry["label"]: entry["score"] for entry in json.loads(ran.stdout.strip().splitlines()[-1])[0]}
    (tmp_path / "long.txt").write_text(long_text + "\n", encoding="utf-8")
    run = glob.glob(str(tmp_path / "runs" / "mine" / "lightning_logs" / "version_*"))[0]
    emolightning("predict", "--config", f"{run}/config.yaml", "--ckpt_path", run, "--data.predict_file", "long.txt", "--output", "long.csv",
                 "--probabilities", "true", *quiet, cwd=tmp_path, env={"PYTHONPATH": str(REPO)})  # fmt: skip
    predicted = pd.read_csv(tmp_path / "long.csv", dtype={"id": str}, keep_default_na=False).iloc[0]
    assert set(exported) == set(LABELS) and all(abs(exported[label] - float(predicted[f"p_{label}"])) < 1e-4 for label in LABELS), (exported, predicted)
