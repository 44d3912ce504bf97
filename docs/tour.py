"""The outputs README.md and docs/*.md show, regenerated from the current code (`make docs`).

    python docs/tour.py           # run the tour (reusing runs/demo if it is trained), keep what it printed
                                  # from in docs/tour/, rewrite every marked block
    python docs/tour.py --stored  # rewrite the blocks from docs/tour/ only (after a change to a formatter)
    python docs/tour.py --check   # run nothing: every marked block must equal what the current code prints
                                  # from docs/tour/, and every `sparsecode ...` line shown must parse

A marked block is the text between ``<!-- tour:NAME -->`` and ``<!-- /tour:NAME -->``; ``BLOCKS`` says how each
is rendered. ``tests/test_docs.py`` runs the check, so a change to a command's output or options that leaves
the docs behind fails the tests until `make docs` is run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "docs" / "tour"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = "runs/demo"
TRAIN = f"train --hook encoder.layer.3 --arch topk --k 32 --latents 6144 --tokens 2M --out {RUN}"
"""The demo's training command, as `make demo` runs it (the Makefile passes the same flags)."""


# -- rendering: stored results -> the text a block shows ------------------------------------------------
def _stored(name: str):
    return json.loads((STORE / name).read_text())


def _code(text: str) -> str:
    return f"```\n{text.rstrip()}\n```"


def render_train() -> str:
    from sparsecode.cli.train import format_summary

    return _code(format_summary(RUN, _stored("metrics-last.json")))


def render_eval() -> str:
    from sparsecode.eval import format_report

    return _code(format_report(_stored("eval.json")))


def render_features() -> str:
    from sparsecode.cli.features import format_summary

    return _code(format_summary(_stored("features.json"), RUN))


def render_speed() -> str:
    """bench/results/speed.md as `make bench` (bench/speed.py) last wrote it."""
    return (ROOT / "bench" / "results" / "speed.md").read_text().strip()


def _first_clause(sentence: str) -> str:
    """The text up to the first "; " outside parentheses (citations such as "(A 2025; B 2025)" stay whole)."""
    depth = 0
    for i, c in enumerate(sentence):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0 and sentence.startswith("; ", i):
            return sentence[:i] + "."
    return sentence


def render_architectures() -> str:
    """One row per registered architecture: its module's first sentence and the options only it (and its
    family) takes, from the same derivation as `sparsecode train --help`."""
    from sparsecode.cli.options import add_config_flags
    from sparsecode.cli.train import SAE_SET_HERE
    from sparsecode.sae import ARCHITECTURES

    configs = [cls.config_class for cls in ARCHITECTURES.values()]
    flags = add_config_flags(argparse.ArgumentParser(), configs, skip=SAE_SET_HERE)
    rows = ["| `--arch` | what it is | its options |", "|---|---|---|"]
    for arch, cls in ARCHITECTURES.items():
        doc = " ".join((sys.modules[cls.__module__].__doc__ or "").split())
        m = re.search(r"(?<!e\.g)(?<!al)\.\s+(?=[A-Z])", doc)
        first = doc[: m.start() + 1] if m else doc
        if len(first) > 140:  # the table wants a line: keep the sentence's first clause
            first = _first_clause(first)
        own = [f"`{f.flag}`" for f in flags if cls.config_class in f.owners and len(f.owners) < len(configs)]
        rows.append(f"| `{arch}` | {first} | {', '.join(own)} |")
    return "\n".join(rows)


BLOCKS = {
    "train": render_train,
    "eval": render_eval,
    "features": render_features,
    "speed": render_speed,
    "architectures": render_architectures,
}
MARKED = re.compile(r"(<!-- tour:(\w+) -->\n)(.*?)(<!-- /tour:\2 -->)", re.DOTALL)


def rewrite(page: Path, check: bool) -> list[str]:
    """Rewrite (or, with ``check``, compare) every marked block of ``page``; the problems found."""
    text = page.read_text()
    problems = []

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            problems.append(f"{page.name}: unknown block tour:{name}")
            return m.group(0)
        want = BLOCKS[name]() + "\n"
        if m.group(3) != want:
            problems.append(f"{page.name}: block tour:{name} is not what the current code prints (run `make docs`)")
        return m.group(1) + want + m.group(4)

    new = MARKED.sub(fill, text)
    if not check and new != text:
        page.write_text(new)
    return problems


# -- command lines shown ------------------------------------------------------------------------------
SYNOPSIS = re.compile(r"\[-|\w\|\w")
"""A usage synopsis, not a command: optional parts in brackets (``[--format auto]``) or alternatives (``a|b``)."""


def shown_commands(text: str) -> list[str]:
    """Every `sparsecode ...` command line inside the page's code blocks (continuation lines joined), synopses
    aside."""
    commands = []
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, re.DOTALL):
        if lang not in ("", "bash", "sh"):
            continue  # e.g. python, whose strings may show commands that do not exist yet
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("sparsecode ") and not SYNOPSIS.search(line):
                commands.append(line.split("  #")[0].split(" # ")[0].strip())
    return commands


def unparsed(commands: list[str], where: str) -> list[str]:
    """A line for each command line the real parser refuses, with argparse's complaint."""
    from sparsecode.cli import build_parser

    parser = build_parser()
    problems = []
    for command in commands:
        argv = shlex.split(command)[1:]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as e:
            if e.code:
                problems.append(f"{where}: `{command}` does not parse: {err.getvalue().strip().splitlines()[-1]}")
    return problems


def check_commands(page: Path) -> list[str]:
    return unparsed(shown_commands(page.read_text()), page.name)


def check() -> list[str]:
    problems = []
    for page in PAGES:
        problems += rewrite(page, check=True) + check_commands(page)
    return problems


# -- running the tour -----------------------------------------------------------------------------------
def run_tour(fresh: bool) -> None:
    from sparsecode.cli import build_parser, main
    from sparsecode.cli import features as features_command

    run = ROOT / RUN
    if fresh or not (run / "sae.safetensors").exists():
        assert main([*TRAIN.split(), "--overwrite"]) == 0
    if fresh or not (run / "eval.json").exists():
        assert main(["eval", RUN]) == 0
    STORE.mkdir(exist_ok=True)
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    (STORE / "metrics-last.json").write_text(json.dumps(json.loads(lines[-1]), indent=1) + "\n")
    shutil.copyfile(run / "eval.json", STORE / "eval.json")
    summary = features_command.build(build_parser().parse_args(["features", RUN, "--quiet"]))
    (STORE / "features.json").write_text(json.dumps(summary, indent=1) + "\n")
    shutil.copyfile(run / "training.png", ROOT / "docs" / "demo-training.png")
    shutil.copyfile(run / "density.png", ROOT / "docs" / "demo-density.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if a block or command is stale")
    p.add_argument("--fresh", action="store_true", help=f"retrain and re-evaluate {RUN} even if it exists")
    p.add_argument("--stored", action="store_true", help="rewrite the blocks from docs/tour/ without running")
    a = p.parse_args()
    if not a.check:
        import os

        os.chdir(ROOT)  # the tour's paths (runs/demo) are relative to the checkout, as in the README
        if not a.stored:
            run_tour(a.fresh)
        for page in PAGES:
            rewrite(page, check=False)
    problems = check()
    print("\n".join(problems) or f"docs are current ({len(PAGES)} pages)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
