"""The python block of docs/coherence.md runs as written and measures what it says (a 2-px pan)."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "coherence.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_coherence_doc_example_runs(capsys):
    assert len(BLOCKS) == 1
    scope = {"__name__": "__doc_example__"}
    exec(compile(BLOCKS[0], "docs/coherence.md", "exec"), scope)
    assert abs(scope["report"]["motion"]["mean_px"] - 2.0) < 0.1
    assert "px a frame" in capsys.readouterr().out
