"""No file a user (or another local user) can supply runs code: planted pickles never run their
payload, and the refusal is one line with exit status 2 (issue 20 defect 2, subprocesses)."""
from __future__ import annotations

from reliability_helpers import one_line


def test_crafted_checkpoint_is_refused_unrun(scenarios):
    """vidhash train --resume on an old-format meta.pt with a payload: it ran before the message."""
    root, runs = scenarios["train_pickle"]
    rc, out, err = runs["train_pickle"].result()
    line = one_line(err)
    assert rc == 2 and "meta.pt is not a vidhash training checkpoint" in line and "refused unrun" in line
    assert not (root / "ran").exists()


def test_crafted_encoder_is_refused_unrun(scenarios):
    """vidhash coherence --features-weights on a .pt2 whose sample inputs are a payload pickle."""
    root, runs = scenarios["coherence_pickle"]
    rc, out, err = runs["coherence_pickle"].result()
    line = one_line(err)
    assert rc == 2 and "bad.pt2" in line and "refused unrun" in line and "Traceback" not in err
    assert not (root / "ran").exists()


def test_coherence_json_on_the_video_is_refused(scenarios):
    root, runs = scenarios["coherence_pickle"]
    before = (root / "v.mp4").read_bytes()
    rc, out, err = runs["coherence_json_is_video"].result()
    assert rc == 2 and "--json" in one_line(err) and (root / "v.mp4").read_bytes() == before
