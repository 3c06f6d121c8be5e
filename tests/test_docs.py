"""The user-facing documents point at things that exist: images, files, modules, links."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "BENCHMARKS.md", "REPRODUCTION.md", "docs/design.md", "tracking/README.md", "docker/README.md"]
pytestmark = pytest.mark.quick  # no Horovod, one process: the quick tier (README, "Contributing")


@pytest.mark.parametrize("doc", DOCS)
def test_images_and_relative_links_exist(doc):
    path = ROOT / doc
    text = path.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    missing = [t for t in local if not (path.parent / t).exists()]
    assert not missing, f"{doc} links to missing files: {missing}"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (path.parent / image).suffix == ".png" and (path.parent / image).stat().st_size > 10_000, image


def test_readme_is_a_guide_and_its_modules_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "scripts/main.sh" in text and "scripts/test.sh" in text  # the two commands
    modules = set(re.findall(r"python -m ([a-z_][\w.]*)", text))
    assert "hvdspar.training.compare" in modules or "hvdspar.training.train" in modules
    for module in modules - {"venv", "pytest"}:
        assert importlib.util.find_spec(module) is not None, f"README runs python -m {module}, which does not exist"
    assert "../shared" not in text  # the repository does not point outside itself
    # the module list names files that exist (after a rename it named compressors.py for a session)
    named = set(re.findall(r"`(?:hvdspar/)?([a-z_]+\.py)`", text))
    package = {p.name for p in (ROOT / "hvdspar").glob("*.py")}
    assert named and not named - package, f"README names modules hvdspar/ lacks: {sorted(named - package)}"
