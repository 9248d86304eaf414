"""Cells cached by an earlier implementation of a preference loss are not reused after it changed."""

from rto.experiments.cells import cell_hash
from rto.experiments.core import pref_spec

DEMO = {"dpo_beta": 0.1, "seed": 0}


def test_rdpo_cells_made_before_the_sign_fix_are_not_reused():
    spec = pref_spec(DEMO, "dpo", loss_type="rdpo")
    before = {k: v for k, v in spec.items() if k != "loss_revision"}  # the spec as earlier versions wrote it
    assert spec["loss_revision"] == 2
    assert cell_hash(spec) != cell_hash(before)


def test_unchanged_losses_keep_their_hashes():
    for loss in ("sigmoid", "simpo", "tdpo"):
        assert "loss_revision" not in pref_spec(DEMO, "dpo", loss_type=loss)
    assert "loss_revision" not in pref_spec(DEMO, "rm")
