"""README is the front door: its quickstart's Python block runs as written, its Hub ids pointed at
tiny local checkpoints, and every page it links to exists."""

import os
import re

from datasets import DatasetDict

from hf_robust_distill.data import demo_digits
from tests.conftest import save_tiny_classifier

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def quickstart_block() -> str:
    text = open(README).read()
    quickstart = text[text.index("## Quickstart"):text.index("## The map")]
    blocks = re.findall(r"```python\n(.*?)```", quickstart, flags=re.S)
    assert len(blocks) == 1, "the quickstart has one Python block"
    return blocks[0]


def test_the_quickstart_python_block_runs_as_written(tmp_path, monkeypatch):
    code = quickstart_block()
    model = save_tiny_classifier(tmp_path / "dinov2-small", "dinov2")
    digits = demo_digits()
    data = DatasetDict(train=digits["train"].select(range(48)), test=digits["test"].select(range(16)))
    data.save_to_disk(str(tmp_path / "cifar10"))
    for hub_id, local in (("facebook/dinov2-small", model), ("uoft-cs/cifar10", str(tmp_path / "cifar10"))):
        assert f'"{hub_id}"' in code
        code = code.replace(f'"{hub_id}"', repr(local))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, README, "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 3 * 6  # three epochs of 48 images in batches of 8
    logged = [entry for entry in trainer.state.log_history if "train_loss" in entry]
    assert logged and logged[-1]["train_loss"] > 0


def test_every_page_the_readme_links_exists():
    text = open(README).read()
    links = re.findall(r"\]\(((?:docs/)[^)#]+)\)", text)
    assert len(set(links)) >= 8
    for link in links:
        assert os.path.isfile(os.path.join(os.path.dirname(README), link)), link
    assert len(text.splitlines()) <= 250
