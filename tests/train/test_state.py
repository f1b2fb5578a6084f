"""dnnlab.train.state: a TrainState survives the checkpoint (torch.save, then torch.load with
weights_only=True, as dnnlab.train.resume.Checkpoint loads it) unchanged, RNG states included;
a checkpoint dict of the older layout (no probe errors, no partial epoch) loads."""
from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnlab.train.resume import Checkpoint
from dnnlab.train.state import Partial, TrainState

_num = st.floats(allow_nan=False, allow_infinity=False, width=64)
_record = st.fixed_dictionaries({"epoch": st.integers(0, 10**6), "val_accuracy": _num,
                                 "train_loss": st.floats(allow_nan=False)})
_partial = st.builds(Partial, st.integers(0, 10**6), st.integers(0, 10**9), _num,
                     st.integers(0, 10**9), st.floats(0, 1e9))
_states = st.builds(
    TrainState, epoch=st.integers(-1, 10**6), step=st.integers(0, 10**9),
    history=st.lists(_record, max_size=5), partial=st.none() | _partial,
    worst=st.fixed_dictionaries({"max_abs_err": st.floats(0, 1e300),
                                 "max_rel_err": st.floats(0, 1e300)}))


@settings(max_examples=60, deadline=None)
@given(state=_states, seed=st.integers(0, 2**32 - 1))
def test_state_round_trips_through_a_checkpoint(tmp_path_factory, state, seed):
    torch.manual_seed(seed)
    random.seed(seed)
    state.capture_rng()
    ck = Checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint.pt", {"seed": seed})
    ck.save({"model": {}, "optimizer": {}} | state.to_dict())
    back = ck.load()
    got = TrainState.from_dict(back)
    assert got.resumed == state.epoch and got.next_epoch == state.epoch + 1
    got.resumed = state.resumed
    assert torch.equal(got.rng["torch"], state.rng["torch"])
    assert got.rng["python"] == state.rng["python"]
    got.rng = state.rng
    assert got == state
    # the generators restored draw what they would have drawn
    want = (torch.rand(3), random.random())
    random.seed(seed + 1)
    torch.manual_seed(seed + 1)
    got.restore_rng()
    assert torch.equal(torch.rand(3), want[0]) and random.random() == want[1]


def test_an_older_checkpoint_dict_loads_with_no_probe_errors_and_no_partial_epoch():
    old = {"model": {}, "optimizer": {}, "epoch": 2, "step": 30, "history": [{"epoch": 0}] * 3}
    s = TrainState.from_dict(old)
    assert (s.epoch, s.step, s.partial, s.rng, s.resumed) == (2, 30, None, None, 2)
    assert s.worst == {"max_abs_err": 0.0, "max_rel_err": 0.0} and len(s.history) == 3
    s.restore_rng()  # nothing to restore: the generators as they are
    part = {"steps": 4, "seen": 256, "loss": 12.5, "correct": 200, "seconds": 1.5}
    s = TrainState.from_dict(old | {"partial": part, "probe_worst": {"max_rel_err": 1e-7}})
    assert s.partial == Partial(4, 256, 12.5, 200, 1.5)
    assert s.worst == {"max_abs_err": 0.0, "max_rel_err": 1e-7}
    assert s.to_dict()["partial"] == part


def test_probed_keeps_the_worst_error_of_every_row():
    s = TrainState()
    s.probed([{"max_abs_err": 1e-6, "max_rel_err": 3e-5}, {"max_abs_err": 2e-6,
                                                          "max_rel_err": 1e-5}])
    s.probed([])
    s.probed([{"max_abs_err": 5e-7, "max_rel_err": 4e-5}])
    assert s.worst == {"max_abs_err": 2e-6, "max_rel_err": 4e-5}
