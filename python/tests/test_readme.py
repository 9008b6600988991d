"""The Python examples of the READMEs run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("readme", ["python/README.md", "README.md"])
def test_readme_examples_run(readme):
    blocks = python_blocks(ROOT / readme)
    assert blocks, f"{readme} has no Python example"
    for block in blocks:
        exec(compile(block, readme, "exec"), {})
