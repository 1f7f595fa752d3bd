"""Lines of the library within 120 characters, checked by ruff (E501, pyproject.toml's line-length).

nbdev writes each module's `__all__` itself, wrapping its names at 120 before it prefixes `__all__ = `: those lines are
counted in the share but do not fail the check. Any other long line fails it, and so does a share over 1%."""
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "training_pipeline"

found = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "E501", "--output-format", "json",
                        "--exit-zero", "--extend-exclude", "*.ipynb", str(PACKAGE)], capture_output=True, text=True, check=True)
long_lines = json.loads(found.stdout)
def text_of(hit): return Path(hit["filename"]).read_text().splitlines()[hit["location"]["row"] - 1]
ours = [hit for hit in long_lines if not text_of(hit).startswith("__all__ = ")]
modules = [p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py"]
total = sum(len(p.read_text().splitlines()) for p in modules)
share = len(long_lines) / total
print(f"{len(long_lines)} of {total} lines over 120 characters ({share:.2%}), {len(ours)} outside nbdev's __all__")
for hit in ours: print(f"{hit['filename']}:{hit['location']['row']}: {hit['message']}", file=sys.stderr)
if ours or share > 0.01:
    sys.exit("error: lines over 120 characters (training_pipeline/): wrap them in the notebooks, then nbdev_export")
