"""``vidhash eval world``: --json / --plot are checked before the evaluation (or before reading
--from-json), naming the flag; a --from-json file that is not a result object is one line naming it."""
from __future__ import annotations

import json
import os

import pytest

from vidhash.cli import main
from vidhash.eval.world.plan import SCHEMA

# the least a saved result needs for the table
RESULT = {"schema": SCHEMA, "model": "random-tiny", "device": "cpu", "dtype": "float32", "seeds": [1000000],
          "learned_signatures": False, "horizons_s": [], "modes": [], "summary": {}, "rows": [], "targets": [],
          "timing": {"frames": 0, "seconds": 0.0, "frames_per_s": 0.0}}


@pytest.fixture
def no_evaluation(monkeypatch):
    import vidhash.cli.eval_world as cli

    monkeypatch.setattr(cli, "evaluate", lambda *a, **k: pytest.fail("the evaluation ran"))


def _refused(capsys, *argv) -> str:
    rc = main(["eval", "world", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0].split(": error: ", 1)[-1]


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_run_output_that_is_a_directory_is_refused_first(tmp_path, no_evaluation, capsys, flag):
    """(defect 3) --json DIR used to fail after the whole evaluation, naming a temporary file."""
    (tmp_path / "emptydir").mkdir()
    path = str(tmp_path / "emptydir")
    line = _refused(capsys, "random-tiny", "--seeds", "1000000", "--horizons", "1", flag, path)
    assert line.startswith(f"{flag} {path}") and "is a directory" in line and ".tmp" not in line, line
    assert list((tmp_path / "emptydir").iterdir()) == []


@pytest.mark.parametrize("flag,name", [("--plot", "x.png"), ("--json", "x.json")])
def test_from_json_output_in_a_missing_folder(tmp_path, capsys, flag, name):
    """--from-json ... --plot /nonexistent/x.png used to fail naming '/nonexistent/.tmp-….png'."""
    src = tmp_path / "ew.json"
    src.write_text(json.dumps(RESULT))
    path = str(tmp_path / "nonexistent" / name)
    line = _refused(capsys, "--from-json", str(src), flag, path)
    assert line.startswith(f"{flag} {path}") and "does not exist" in line and ".tmp" not in line, line
    assert not (tmp_path / "nonexistent").exists()


def test_from_json_writes_with_usual_permissions(tmp_path, capsys):
    src = tmp_path / "ew.json"
    src.write_text(json.dumps(RESULT))
    old = os.umask(0o022)
    try:
        assert main(["eval", "world", "--from-json", str(src), "--json", str(tmp_path / "m.json")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((tmp_path / "m.json").read_text())["schema"] == SCHEMA


@pytest.mark.parametrize("content", ["[]", '"text"', "3", "null"], ids=["list", "string", "number", "null"])
def test_from_json_that_is_not_an_object(tmp_path, capsys, content):
    """A file holding [] used to end in AttributeError: 'list' object has no attribute 'get'."""
    path = tmp_path / "emptylist.json"
    path.write_text(content)
    line = _refused(capsys, "--from-json", str(path))
    assert line.startswith(f"--from-json {path}") and f"not a {SCHEMA} file" in line, line


def test_from_json_that_is_a_directory(tmp_path, capsys):
    line = _refused(capsys, "--from-json", str(tmp_path))
    assert line.startswith(f"--from-json {tmp_path}") and "is a directory" in line and "Errno" not in line, line


@pytest.mark.parametrize("argv, named", [
    (["--seeds", "5"], "--seeds applies"),
    (["--fps", "4", "--modes", "hashed", "--device", "cpu"], "--fps, --modes, --device apply"),
    (["random-tiny", "--horizons", "1"], "the model random-tiny, --horizons apply"),
    (["--no-cuda-graphs", "--dtype", "bfloat16", "--recall-every", "16"], "--dtype, --recall-every, --no-cuda-graphs apply"),
], ids=["seeds", "three-flags", "model", "boolean"])
def test_from_json_refuses_the_flags_of_a_run(tmp_path, no_evaluation, capsys, argv, named):
    """--from-json with a run's flags beside it (--seeds 5, --fps 4, a model, ...) redrew the saved
    result as if they were not there: one line naming them now, before any file is read or written."""
    src = tmp_path / "ew.json"
    src.write_text(json.dumps(RESULT))
    line = _refused(capsys, *argv, "--from-json", str(src), "--json", str(tmp_path / "m.json"))
    assert line.startswith("--from-json redraws saved results and runs nothing: ") and named in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ew.json"]


def test_from_json_takes_its_own_flags_and_defaults(tmp_path, capsys):
    """--json, --plot and --quiet are --from-json's; a run flag at its default value is taken as not given."""
    src = tmp_path / "ew.json"
    src.write_text(json.dumps(RESULT))
    assert main(["eval", "world", "--from-json", str(src), "--json", str(tmp_path / "m.json"), "--quiet",
                 "--fps", "8"]) == 0
    assert (tmp_path / "m.json").is_file()
