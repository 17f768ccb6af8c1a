"""Edges of the Python API found by trying to break it (2026-12-05): NaN scores, empty inputs,
hand-made selections, a scheduler before ``set_timesteps``."""
import pytest
import torch

import vidhash
from vidhash import HashedMemory, hash_attention, select_blocks, selection_recall
from vidhash.attention import fused_attention_lse
from vidhash.ops.checks import BlockSelection
from vidhash.selection import select_from_mass


@pytest.mark.parametrize("scorer", ["pooled", "prefilter", "moments", "simhash"])
def test_a_nan_score_never_pushes_out_a_forced_block(scorer):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 256, 16, generator=g), torch.randn(1, 1, 256, 16, generator=g)
    q[0, 0, 100, 3] = float("nan")  # query block 6 (of 16 queries) has a NaN score with every key block
    idx = select_blocks(q, k, density=1 / 16, block_size=16, scorer=scorer).indices[0, 0, 6].tolist()
    assert 0 in idx and 6 in idx  # the sink and the block's own (local) block


def test_a_nan_mass_never_pushes_out_a_forced_block():
    mass = torch.rand(1, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    mass[0, 0, 3, 5] = float("nan")
    idx = select_from_mass(mass, 100, 100, density=0.25, block_size=16, query_block_size=16).indices[0, 0, 3].tolist()
    assert 0 in idx and 3 in idx


def test_zero_queries_give_empty_outputs_not_a_crash():
    k = torch.randn(1, 2, 10, 8)
    out, lse = fused_attention_lse(torch.randn(1, 2, 0, 8), k, k)  # the CPU flash kernel died of SIGFPE here
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)
    memory = HashedMemory(num_buckets=16, slots=4, heads=2, head_dim=8)
    memory.write(torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8), 0)
    for top_k in (None, 3):  # every entry (dense) and the selective read ("torch.cat(): expected a non-empty list")
        out, lse, idx = memory.attend(torch.randn(1, 2, 0, 8), top_k=top_k, return_indices=True)
        assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0) and idx.shape[:3] == (1, 2, 0)
    with pytest.raises(ValueError, match="backend"):  # refused on the read-everything path too
        memory.attend(torch.randn(1, 2, 5, 8), backend="bogus")
    v = torch.randn(1, 2, 50, 8)
    for scorer in ("pooled", "simhash", "moments"):
        out, lse = hash_attention(torch.randn(1, 2, 0, 8), k.repeat(1, 1, 5, 1), v, density=0.25, block_size=16,
                                  scorer=scorer, remainder="mean", return_lse=True)
        assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)


def test_a_hand_made_selection_must_fit_q_and_k():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 100, 16, generator=g) for _ in range(3))
    sel = select_blocks(q, k, density=0.25, block_size=16)
    few_rows = BlockSelection(sel.indices[:, :, :3], 16, 16, 100, 100, False)  # gave a (1, 2, 48, 16) output
    floats = BlockSelection(sel.indices.float(), 16, 16, 100, 100, False)
    for bad in (few_rows, floats):
        with pytest.raises(ValueError, match="selection.indices must be integers"):
            hash_attention(q, k, v, selection=bad)
        with pytest.raises(ValueError, match="selection.indices must be integers"):
            vidhash.block_sparse_attention(q, k, v, bad)
    with pytest.raises(ValueError, match="selection was made for 100 queries"):
        selection_recall(torch.randn(1, 2, 200, 16), k, sel)
    with pytest.raises(ValueError, match="max_query_blocks"):
        selection_recall(q, k, sel, max_query_blocks=0)


def test_dense_timestep_for_refuses_a_scheduler_before_set_timesteps():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # holds its 1,000 training timesteps until set_timesteps
    with pytest.raises(ValueError, match="set_timesteps"):
        vidhash.dense_timestep_for(scheduler, 6)
    scheduler.set_timesteps(30)
    t = vidhash.dense_timestep_for(scheduler, 6)
    assert int((scheduler.timesteps >= t).sum()) == 6


def test_nonsense_arguments_are_named():
    mass = torch.rand(1, 1, 7, 7)
    for kw, match in ((dict(density=0), "density"), (dict(density=2.0), "density"),
                      (dict(density=0.25, local_blocks=-1), "local_blocks")):
        with pytest.raises(ValueError, match=match):  # select_from_mass skipped these checks
            select_from_mass(mass, 100, 100, block_size=16, query_block_size=16, **kw)
    q = torch.randn(1, 1, 50, 16)
    for scale in (-1.0, float("nan"), 0.0):  # a math domain error (moments' sqrt) or silent NaN outputs
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            hash_attention(q, q, q, scale=scale, scorer="moments")
    with pytest.raises(ValueError, match="head_dim 0"):  # was a ZeroDivisionError
        hash_attention(torch.randn(1, 1, 5, 0), torch.randn(1, 1, 5, 0), torch.randn(1, 1, 5, 4))


def test_a_dtype_cast_keeps_the_simhash_planes_exact():
    hasher = vidhash.SimHash(16, 32, heads=2, seed=3)
    planes = hasher.planes.clone()
    hasher.to(torch.bfloat16).half().to(torch.float32)  # rounded each time before
    assert hasher.planes.dtype == torch.float32 and torch.equal(hasher.planes, planes)
    memory = HashedMemory(num_buckets=16, slots=4, heads=2, head_dim=16)
    keys = torch.randn(1, 2, 40, 16)
    before = memory.hasher(keys).clone()
    memory.to(torch.bfloat16).to(torch.float32)
    assert torch.equal(memory.hasher(keys), before)  # 1.75 % of keys signed otherwise after a bf16 round trip


def test_constructors_name_a_bad_argument():
    from vidhash.hashing import token_bucket
    for kw, match in ((dict(head_dim=16.0), "head_dim"), (dict(head_dim=16, heads=0), "heads"),
                      (dict(head_dim=16, seed="x"), "seed"), (dict(head_dim=16, seed=2**64), "seed")):
        with pytest.raises(ValueError, match=match):  # TypeError / RuntimeError from torch before
            vidhash.SimHash(**kw)
    import numpy as np
    assert torch.equal(vidhash.SimHash(np.int64(16), np.int64(8), seed=np.int64(3)).planes, vidhash.SimHash(16, 8, seed=3).planes)
    ids = torch.arange(5)
    for kw, match in ((dict(num_buckets=2**70), "num_buckets"), (dict(num_buckets=8, key=2**70), "key"),
                      (dict(num_buckets=8, key=1.5), "key")):
        with pytest.raises(ValueError, match=match):  # an OverflowError from int.to_bytes before
            token_bucket(ids, **kw)
    assert torch.equal(token_bucket(ids, 8, key=-1), token_bucket(ids, np.int64(8), key=-1))


def test_the_default_hasher_under_torch_compile():
    """The default SimHash is drawn with a torch.Generator (untraceable): under fullgraph=True the error
    says how to build it first; without fullgraph a graph break; once built, fullgraph traces."""
    from vidhash.hashing import _DEFAULT_HASHERS
    q, k, v = torch.randn(3, 1, 2, 256, 24).unbind(0)  # head_dim 24: no other test caches this hasher
    fn = lambda q, k, v: hash_attention(q, k, v, density=0.5, block_size=64, scorer="simhash")  # noqa: E731
    ref = fn(q, k, v)
    _DEFAULT_HASHERS.clear()
    torch._dynamo.reset()
    with pytest.raises(Exception, match="default_hasher"):  # torch._dynamo's Unsupported, naming the fix
        torch.compile(fn, backend="eager", fullgraph=True)(q, k, v)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(fn, backend="eager")(q, k, v), ref)  # graph break, the hasher cached
    torch._dynamo.reset()
    assert torch.equal(torch.compile(fn, backend="eager", fullgraph=True)(q, k, v), ref)
    torch._dynamo.reset()


def test_a_negative_trajectory_seed_is_named():
    from vidhash.pipelines import VidHashPipeline
    pipe = VidHashPipeline.random("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    for seed in (-1, 1.5, 2**63):  # numpy's default_rng error after the first chunk's denoising before
        with pytest.raises(ValueError, match="trajectory_seed"):
            pipe(num_frames=2, height=16, width=16, num_inference_steps=1, chunk_frames=2, trajectory_seed=seed)
