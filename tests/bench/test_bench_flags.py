"""Every ``vidhash bench`` refuses a bad flag before any work, naming the flag (argparse's usage
error, status 2), reports failed rows with a non-zero status, and writes its JSON whole or not at all."""
import json
import os

import pytest

from vidhash.files import write_json
from vidhash.cli import main


def status(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("argv, flag", [
    (["bench", "hashhop", "--device", "foo"], "--device"),
    (["bench", "hashhop", "--device", "cuda:0"], "--device"),  # this CPU machine has no CUDA
    (["bench", "hashhop", "--queries", "-1"], "--queries"),
    (["bench", "hashhop", "--sizes", "1000,,2000"], "--sizes"),
    (["bench", "hashhop", "--sizes", "1.7"], "--sizes"),
    (["bench", "hashhop", "--scale", "nan"], "--scale"),
    (["bench", "attention", "--device", "foo"], "--device"),
    (["bench", "attention", "--block-sizes", "64,,16"], "--block-sizes"),
    (["bench", "attention", "--density", "2"], "--density"),
    (["bench", "memory", "--clusters", "0"], "--clusters"),
    (["bench", "memory", "--frame-tokens", "0"], "--frame-tokens"),
    (["bench", "memory", "--top-k", "2,,x"], "--top-k"),
    (["bench", "coherence", "--fps", "0"], "--fps"),
    (["bench", "coherence", "--frames", "-5"], "--frames"),
    (["bench", "coherence", "--size", "0"], "--size"),
    (["bench", "coherence", "--threads", ""], "--threads"),
    (["bench", "data", "--consumer-ms", "nan"], "--consumer-ms"),
    (["bench", "data", "--cache", "bogus"], "--cache"),
    (["bench", "generation", "--threads", "-1"], "--threads"),
    (["bench", "generation", "--fps", "0"], "--fps"),
    (["bench", "generation", "--seconds", "abc"], "--seconds"),
    (["bench", "generation", "--steps", "0"], "--steps"),
    (["bench", "dropin", "--model", "m", "--fps", "0"], "--fps"),
    (["bench", "dropin", "--model", "m", "--device", "foo"], "--device"),
    (["bench", "dropin", "--model", "m", "--strip", "strip.jpg"], "--strip"),
    (["bench", "realism", "--seeds", ""], "--seeds"),
    (["bench", "realism", "--frames", "0"], "--frames"),
    (["bench", "hashhop", "--json", "/nonexistent-folder/x.json"], "--json"),
    (["bench", "realism", "no-such-clip.mp4"], "clips"),
])
def test_a_bad_flag_is_a_usage_error_naming_it(argv, flag, capsys):
    assert status(argv) == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_json_into_a_folder_is_refused_before_the_run(tmp_path, capsys):
    assert status(["bench", "coherence", "--frames", "2", "--json", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_errors_name_the_bench_and_descriptions_are_whole(capsys):
    assert status(["bench", "data", "--steps", "1"]) == 2  # the run's own check: "vidhash bench data: error: --steps ..."
    assert "vidhash bench data: error: --steps must be at least 2" in capsys.readouterr().err
    assert status(["bench", "data", "--help"]) == 0
    assert "with and without the shared world cache" in " ".join(capsys.readouterr().out.split())


def test_the_kernel_benches_on_a_cpu_need_the_interpreter(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert status(["bench", "attention", "--device", "cpu", "--no-wan", "--sizes", "256"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
    assert status(["bench", "memory", "--device", "cpu"]) == 2
    assert "TRITON_INTERPRET=1" in capsys.readouterr().err
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert status(["bench", "attention", "--device", "cpu", "--no-wan", "--sizes", ""]) == 2
    assert "nothing to run" in capsys.readouterr().err


def test_failed_rows_give_a_failure_status(monkeypatch, capsys):
    from vidhash.bench import selection

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel here")

    monkeypatch.setattr(selection, "select_row", broken)
    argv = ["bench", "selection", "--device", "cpu", "--sizes", "1024", "--no-wan", "--heads", "1", "--head-dim", "16",
            "--block-sizes", "32", "--eval-blocks", "2", "--scorers", "simhash"]
    assert status(argv) == 1
    assert "1 of 1 rows failed" in capsys.readouterr().err


def test_generation_refuses_what_it_cannot_run(capsys):
    assert status(["bench", "generation", "--modes", "", "--seconds", "1"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert status(["bench", "generation", "--cuda-graphs", "--device", "cpu", "--seconds", "1"]) == 2
    assert "--cuda-graphs" in capsys.readouterr().err


def test_train_compare_refuses_a_non_finite_loss(tmp_path, capsys):
    run = tmp_path / "loss.csv"
    run.write_text("step,elapsed_s,val_loss_ema\n10,5.0,0.5\n20,10.0,nan\n")
    assert status(["bench", "train-compare", str(run), str(run)]) == 2
    assert "not finite" in capsys.readouterr().err


def test_dropin_refuses_a_model_of_another_kind(tmp_path, capsys):
    model = tmp_path / "world"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "VidHashPipeline"}))
    assert status(["bench", "dropin", "--model", str(model)]) == 2
    assert "not a WanMiniPipeline export" in capsys.readouterr().err


def test_write_json_is_whole_or_absent(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(TypeError):
        write_json(str(path), {"rows": [object()]})  # not serialisable: nothing written, no temp file left
    assert not path.exists() and os.listdir(tmp_path) == []
    write_json(str(path), {"rows": [1]})
    assert json.loads(path.read_text()) == {"rows": [1]}


def test_train_compare_tells_two_files_of_one_folder_apart(tmp_path, capsys):
    for name, loss in (("dense.csv", 0.5), ("sparse.csv", 0.4)):
        (tmp_path / name).write_text(f"step,elapsed_s,val_loss_ema\n10,5.0,0.9\n20,10.0,{loss}\n")
    assert status(["bench", "train-compare", str(tmp_path / "dense.csv"), str(tmp_path / "sparse.csv")]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:4]]
    assert names == ["dense", "sparse"]  # a file not named loss.csv / train_state.json: its stem
    (tmp_path / "dense").mkdir()  # a run folder's loss.csv is named by the folder: "dense" twice
    (tmp_path / "dense" / "loss.csv").write_text((tmp_path / "dense.csv").read_text())
    assert status(["bench", "train-compare", str(tmp_path / "dense" / "loss.csv"), str(tmp_path / "dense.csv")]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:4]]
    assert names == ["loss.csv", "dense.csv"]  # both named "dense": told apart by their files


def test_finite_json_writes_standard_json(tmp_path):
    """Infinity and NaN (Python's, numpy's) become null, so strict parsers read the file; the rest
    stays as it was."""
    import json

    import numpy as np

    from vidhash.files import finite_json, write_json

    report = {"psnr": float("inf"), "rows": [np.float32("inf"), np.float64("nan"), np.float32(0.5), 3, True, None, "x"]}
    path = tmp_path / "r.json"
    write_json(path, finite_json(report), allow_nan=False)
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "psnr": None, "rows": [None, None, 0.5, 3, True, None, "x"]}


def test_the_shared_json_writer_writes_standard_json(tmp_path):
    """The benches that write through :func:`vidhash.files.write_json` (hashhop, memory, attention,
    coherence, selection, train-compare, ...) wrote ``NaN`` / ``Infinity`` — Python's extension,
    which strict parsers refuse — for a non-finite number: null now, numpy's and a ``default=``
    hook's included, with no finite_json call of the caller's own."""
    import numpy as np

    report = {"ratio": float("inf"), "loss": float("nan"), "rows": [{"ms": np.float32("-inf")}, (0.5, 2, True, None)],
              "tensor": object()}
    path = tmp_path / "r.json"
    write_json(path, report, indent=1, default=lambda obj: float("nan"))
    assert json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON")) == {
        "ratio": None, "loss": None, "rows": [{"ms": None}, [0.5, 2, True, None]], "tensor": None}
