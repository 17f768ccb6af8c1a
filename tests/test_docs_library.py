"""The python block of docs/library.md runs as written (CPU, the references)."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_library_doc_example_runs(capsys):
    assert len(BLOCKS) == 1
    exec(compile(BLOCKS[0], "docs/library.md", "exec"), {"__name__": "__doc_example__"})
    assert "recall" in capsys.readouterr().out
