"""init_from: a fresh run starts from a saved pipeline's transformer weights (warm start)."""
import pytest
import torch

from vidhash.pipelines import VidHashPipeline
from vidhash.training import load_train_config
from vidhash.training.trainer import train


def _cfg(tmp_path, name, *extra):
    return load_train_config("configs/train/cpu_test.yaml", [f"out_dir={tmp_path / name}", "max_steps=1", *extra])


def test_init_from_loads_weights_and_refuses_other_configs(tmp_path):
    torch.set_num_threads(1)
    train(_cfg(tmp_path, "a", "optim.lr=1e-2"))
    src = tmp_path / "a" / "export"
    saved = VidHashPipeline.from_pretrained(str(src)).transformer.state_dict()
    # zero steps of training beyond the warm start: EMA export == the weights it started from
    cfg = _cfg(tmp_path, "b", f"init_from={src}", "optim.lr=1e-12", "optim.weight_decay=0.0")
    train(cfg)
    again = VidHashPipeline.from_pretrained(str(tmp_path / "b" / "export")).transformer.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(again[k], v, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="another model config"):
        train(_cfg(tmp_path, "c", f"init_from={src}", "model.num_layers=3"))
    with pytest.raises(ValueError, match="not a saved pipeline folder"):
        train(_cfg(tmp_path, "d", f"init_from={tmp_path}"))


def test_init_from_a_velocity_model_saved_before_prediction_existed(tmp_path):
    """A pipeline saved without the prediction key (world-tiny-v1) predicts velocity: a
    prediction=sample run refuses to warm-start from it, a velocity run accepts it."""
    import json

    torch.set_num_threads(1)
    train(_cfg(tmp_path, "a"))
    conf = tmp_path / "a" / "export" / "transformer" / "config.json"
    saved = json.loads(conf.read_text())
    for key in ("prediction", "sigma_min"):
        saved.pop(key)
    conf.write_text(json.dumps(saved))
    src = tmp_path / "a" / "export"
    with pytest.raises(ValueError, match="another model config.*prediction"):
        train(_cfg(tmp_path, "b", f"init_from={src}", "model.prediction=sample"))
    train(_cfg(tmp_path, "c", f"init_from={src}"))
