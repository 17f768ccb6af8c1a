import pytest

from vidhash.pipelines import VidHashPipeline


@pytest.fixture(scope="session")
def tiny_pipe():
    pipe = VidHashPipeline.random("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe

