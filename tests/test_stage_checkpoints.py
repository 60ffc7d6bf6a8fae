"""Stage checkpoints of multi-stage fits (training/checkpoint.py): per-stage fingerprints from
the signature's order, refusal with the differing keys, atomic save and load."""

import numpy as np
import pytest
import torch

from diffclust.training.checkpoint import StageCheckpoints, stage_fingerprints


class _Est:
    def __init__(self, n_clusters=3, *, a_lr=1.0, a_epochs=2, b_lr=0.5, c_rounds=4, verbose=True,
                 device=None):
        self.n_clusters, self.a_lr, self.a_epochs = n_clusters, a_lr, a_epochs
        self.b_lr, self.c_rounds, self.verbose, self.device = b_lr, c_rounds, verbose, device
        self.seed_ = 0


STAGES = {"a": "a_lr", "b": "b_lr", "c": "c_rounds"}
X = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_a_stage_depends_on_its_parameters_and_those_before():
    fp = stage_fingerprints(_Est(), X, STAGES)
    assert set(fp["a"]) >= {"n_clusters", "a_lr", "a_epochs", "data", "seed"}
    assert "b_lr" not in fp["a"] and "c_rounds" not in fp["b"] and "c_rounds" in fp["c"]
    assert "verbose" not in fp["c"] and "device" not in fp["c"]
    later = stage_fingerprints(_Est(b_lr=0.1), X, STAGES)
    assert later["a"] == fp["a"] and later["b"] != fp["b"] and later["c"] != fp["c"]
    other_data = stage_fingerprints(_Est(), X + 1, STAGES)
    assert all(other_data[s] != fp[s] for s in STAGES)


def test_save_load_and_refusal(tmp_path):
    ck = StageCheckpoints(tmp_path, stage_fingerprints(_Est(), X, STAGES))
    assert ck.load("a") is None
    ck.save("a", {"w": torch.arange(3.0)}, {"epoch": 2})
    ck.save("b", {"w": torch.ones(2)}, {"done": True}, tag="1")
    meta, t = ck.load("a")
    assert meta == {"epoch": 2} and torch.equal(t["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.glob("b-*.safetensors")) == ["b-1.safetensors"]
    # a later stage's setting changed: stage a is reused, stage b refused with what differs
    ck2 = StageCheckpoints(tmp_path, stage_fingerprints(_Est(b_lr=0.1), X, STAGES))
    assert ck2.load("a")[0] == {"epoch": 2}
    with pytest.raises(ValueError, match=r"differs in \['b_lr'\].*delete b.json, c.json"):
        ck2.load("b")
    assert ck.tag("b") != ck2.tag("b") and ck.tag("a") == ck2.tag("a")
    assert StageCheckpoints(None, {}).load("a") is None  # no folder: nothing kept
