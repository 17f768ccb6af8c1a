import pytest

from vidhash.eval.world import WorldEvalOptions, evaluate

# The smallest loop the random tiny model can run: 16×16 frames (view 16: 4 frames to leave it),
# 1 denoising step, a 4-frame visit, a horizon of 1 s at 8 fps (8 frames away).
TINY = dict(model="random-tiny", seeds=(1_000_000,), fps=8, visit_seconds=0.5, steps=1, frame_size=16,
            progress=False)


def tiny_options(**kwargs) -> WorldEvalOptions:
    return WorldEvalOptions(**{**TINY, **kwargs})


@pytest.fixture(scope="session", name="tiny_options")
def tiny_options_fixture():
    return tiny_options


@pytest.fixture(scope="session")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    o = tiny_options(horizons=(1.0,), json=str(out / "world.json"),
                     plot=str(out / "world.png"))
    return evaluate(o), out
