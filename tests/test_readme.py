"""README.md is kept by hand in sync with nbs/index.ipynb (quarto, which nbdev_readme needs, is not
installable here). This test is the sync check: the README must be the notebook's markdown cells
and visible code cells, in order."""
import json
import re

from conftest import REPO


def readme_from_index():
    nb = json.loads((REPO / "nbs" / "index.ipynb").read_text())
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown": parts.append(src)
        elif not src.lstrip().startswith("#| hide"):
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))  # nbdev directives
            parts.append("```python\n" + code + "\n```")
    return ("\n\n".join(parts) + "\n").replace("../config/", "config/")


def test_readme_matches_index_notebook():
    assert (REPO / "README.md").read_text() == readme_from_index(), \
        "README.md is out of sync with nbs/index.ipynb: regenerate it from the notebook"


def test_quick_start_has_exactly_two_commands():
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S).group(1)
    commands = [l.split("#")[0].strip() for l in block.splitlines() if l.split("#")[0].strip()]
    assert commands == ["bash .ci/demo", "bash .ci/test"]
    assert (REPO / ".ci" / "run").read_text().strip().endswith("exec bash .ci/test")


def test_every_notebook_the_readme_names_exists():
    "The feature map links each feature to the notebook that documents it: a renamed notebook must not leave it dangling."
    links = re.findall(r"\]\((nbs/[^)#]+)\)", (REPO / "README.md").read_text())
    assert len(links) > 20, links
    assert [link for link in links if not (REPO / link).is_file()] == []
