"""The docs show what the current code prints: every marked output block of README.md and docs/*.md equals what
docs/tour.py renders from the stored tour results (docs/tour/), and every command line shown parses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tour():
    spec = importlib.util.spec_from_file_location("tour", ROOT / "docs" / "tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shown_outputs_come_from_the_current_code(tour):
    assert tour.check() == []


def test_every_block_is_filled(tour):
    readme = (ROOT / "README.md").read_text()
    for name in ("train", "eval", "features", "architectures", "speed"):
        assert f"<!-- tour:{name} -->" in readme, name
    assert len(readme.splitlines()) <= 200


def test_a_stale_block_or_a_wrong_command_is_caught(tour, tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    good = "<!-- tour:train -->\n" + tour.render_train() + "\n<!-- /tour:train -->\n"
    page.write_text("<!-- tour:train -->\n<!-- /tour:train -->\n")  # an empty block is stale too
    assert len(tour.rewrite(page, check=True)) == 1
    page.write_text(good + "```\nsparsecode train --out runs/x --k 3\n```\n")
    assert tour.rewrite(page, check=True) == [] and tour.check_commands(page) == []
    page.write_text(
        good.replace("trained runs", "Trained runs") + "```\nsparsecode train --out runs/x --no-such-flag\n```\n"
    )
    assert len(tour.rewrite(page, check=True)) == 1
    assert "--no-such-flag" in tour.check_commands(page)[0]
