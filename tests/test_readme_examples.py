"""The README's examples run as written: the "In 60 seconds" code and the demo command, each in a fresh folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# one line per direction, e.g. "text->image, full (375 queries, gallery of 125 images) 0.874"
LABELLED_MRR = re.compile(
    r"^(text->image|image->text), (\w+) \((\d+) queries, gallery of (\d+) (images|captions)\) (\d\.\d{1,3})$"
)


def _section(heading: str) -> str:
    """The README's text from ``## heading`` to the next ``## ``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_the_60_seconds_example_runs_and_prints_labelled_figures(tmp_path):
    (block,) = _code_blocks(_section("In 60 seconds"), "python")
    # after the block, as it left them: the run folder it named and the submission vectors it made
    check = "\nprint('vectors', *vectors.shape, data.image_dim)\n"
    done = subprocess.run(
        [sys.executable, "-c", block + check], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    figures = [LABELLED_MRR.match(line) for line in lines[:-1]]
    assert figures and all(figures), done.stdout  # "protocol, queries, gallery: always named"
    assert [m.group(1) for m in figures] == ["text->image", "image->text"], done.stdout
    for match in figures:
        assert match.group(2) == "full" and 0 < float(match.group(6)) <= 1, match.group(0)
    text_to_image = figures[0]
    assert int(text_to_image.group(4)) * 3 == int(text_to_image.group(3))  # captions_per_image=3, split by image
    _, rows, width, image_dim = lines[-1].split()
    assert rows == text_to_image.group(3) and width == image_dim  # one image-space vector per dev caption
    assert (tmp_path / "runs" / "quick" / "config.json").exists()  # out="runs/quick"
    assert (tmp_path / "runs" / "quick" / "README.md").exists()  # its model card


def test_the_60_seconds_example_names_the_recipes_it_points_to():
    """The block's comment sends the reader to ``stitch recipes``; the recipe it uses must be listed there."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "stitch"), "recipes"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^\s*ridge\b", done.stdout, flags=re.MULTILINE), done.stdout


def _demo_command() -> list[str]:
    """The README's demo line (``... && .venv/bin/stitch demo``): its last command, the venv's ``stitch``."""
    (block,) = _code_blocks(_section("Two commands").split("\n\nInstall and run the tests")[0], "bash")
    words = block.strip().split(" && ")[-1].split()
    assert words[0] == ".venv/bin/stitch" and words[1] == "demo", block
    return [str(Path(sys.executable).parent / "stitch"), *words[1:]]


@pytest.mark.slow  # trains ridge and the default recipe on 4,000 synthetic images: minutes on 2 cores
def test_the_readme_demo_command_runs(tmp_path):
    done = subprocess.run(_demo_command(), cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("SYNTHETIC data"), out[:500]  # "on built-in synthetic data"
    summary = out[out.index("\nSummary (SYNTHETIC data") :]
    assert re.search(r"^\s+ridge(\s+\d\.\d{3}){5}$", summary, flags=re.MULTILINE), summary
    assert re.search(r"^\s+default \(resmlp \+ InfoNCE\)(\s+\d\.\d{3}){5}$", summary, flags=re.MULTILINE), summary
    for recipe in ("ridge", "default"):
        assert (tmp_path / "runs" / "demo" / recipe / "README.md").exists(), recipe  # the model cards it names


def test_the_readme_demo_command_is_the_cli_s():
    """Cheap guard for the slow test above: the README's demo line parses (its flags exist)."""
    done = subprocess.run([*_demo_command(), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: stitch demo"), done.stdout
