"""The training loop (`DiffRegLogic.learning.trainer`) and its schedule and budget (`learning.schedule`).

Truth: the learning-rate factor against its closed form written out here;
the budget against a hand-driven clock; a tiny seeded run on the phantom
against the no-learning baseline (predicting the reference pose for every
validation DRR, its mTRE computed here from `evaluation.mtre`); the
progress records against the config (step counts, fractions, the learning
rate of each step); resume against an uninterrupted run of the same config
(the same weights), and refusals against configs, CTs and files that differ.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from DiffRegLogic import evaluation
from DiffRegLogic.errors import InputError
from DiffRegLogic.experiments.demo import demo_detector
from DiffRegLogic.learning.augment import DEFAULT_AUGMENTATION, NO_AUGMENTATION
from DiffRegLogic.learning.data import DRRSource, validation_set
from DiffRegLogic.learning.networks import PoseNetConfig
from DiffRegLogic.learning.poses import PoseRange, reference_view
from DiffRegLogic.learning.schedule import Budget, lr_factor
from DiffRegLogic.learning.trainer import TrainConfig, train
from DiffRegLogic.volume.ct import Volume
from DiffRegLogic.volume.phantoms import chest_phantom

PROGRESS_FIELDS = {"event", "step", "steps", "fraction", "elapsed_s", "eta_s", "loss", "pose_loss", "structure_loss",
                   "lr", "images_per_s", "stage", "val_mtre_mm"}
SMALL_A = PoseNetConfig(image_size=32, backbone="small", decoder=False, attention=False, positional_embedding=False,
                        dropout=0.0)


def closed_form(p: float, w: float, final: float = 0.0) -> float:
    if p < w:
        return p / w
    return final + (1 - final) * (1 + math.cos(math.pi * (p - w) / (1 - w))) / 2


# ---------------------------------------------------------------------- schedule and budget


def test_lr_factor_is_linear_warmup_then_cosine():
    for w in (0.0, 0.05, 0.3):
        for final in (0.0, 0.1):
            for p in [i / 40 for i in range(41)]:
                assert lr_factor(p, w, final) == pytest.approx(closed_form(p, w, final), abs=1e-12)
    assert lr_factor(0.025, 0.05) == pytest.approx(0.5)
    assert lr_factor(0.05, 0.05) == pytest.approx(1.0)
    assert lr_factor(0.525, 0.05) == pytest.approx(0.5)  # half way through the cosine
    assert lr_factor(1.0, 0.05) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(-1.0, 0.05) == 0.0 and lr_factor(2.0, 0.05, 0.1) == pytest.approx(0.1)  # clamped
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(InputError, match="warmup_fraction"):
            lr_factor(0.5, bad)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_step_budget():
    clock = Clock()
    budget = Budget(steps=10, clock=clock)
    assert budget.progress(0) == 0.0 and budget.lr_progress(0) == 0.05 and budget.eta(0) is None
    clock.now += 8.0
    assert budget.progress(4) == 0.4 and budget.elapsed == 8.0 and budget.eta(4) == pytest.approx(12.0)
    assert not budget.done(9) and budget.done(10)
    resumed = Budget(steps=10, start_step=4, start_elapsed=8.0, clock=clock)
    clock.now += 3.0
    assert resumed.elapsed == pytest.approx(11.0) and resumed.eta(7) == pytest.approx(3.0)  # 1 s per step now


def test_time_budget():
    clock = Clock()
    budget = Budget(seconds=60.0, start_elapsed=15.0, clock=clock)
    assert budget.progress(0) == 0.25 and budget.eta(0) == 45.0
    clock.now += 30.0
    assert budget.progress(99) == 0.75 and budget.lr_progress(99) == 0.75 and not budget.done(99)
    budget.sync(59.0)  # an agreed elapsed time (distributed runs) overrides the clock
    assert budget.elapsed == 59.0 and budget.eta(1) == 1.0
    budget.sync(None)
    clock.now += 15.0
    assert budget.done(0) and budget.progress(0) == 1.0 and budget.eta(0) == 0.0
    for kwargs, message in ((dict(), "exactly one"), (dict(steps=1, seconds=1.0), "exactly one"),
                            (dict(seconds=0.0), "> 0"), (dict(steps=0), "steps"), (dict(steps=2.5), "steps")):
        with pytest.raises(InputError, match=message):
            Budget(**kwargs)


# ---------------------------------------------------------------------- config


def test_config_round_trip_and_refusals():
    config = TrainConfig(network=SMALL_A, pose_range=PoseRange((5.0, 6.0, 7.0), (1.0, 2.0, 3.0)), minutes=2.5,
                         pose_loss="geodesic", seed=7)
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config
    assert data["network"]["backbone"] == "small" and data["minutes"] == 2.5 and data["steps"] is None
    with pytest.raises(InputError, match="unknown training config key.*'epochs'"):
        TrainConfig.from_dict({**data, "epochs": 3})
    for kwargs, message in ((dict(minutes=0), "minutes must be a number > 0"), (dict(minutes=-1.0), "minutes"),
                            (dict(steps=0), "steps must be a whole number >= 1"), (dict(), "exactly one"),
                            (dict(steps=5, minutes=1.0), "exactly one"), (dict(steps=5, batch_size=0), "batch_size"),
                            (dict(steps=5, lr=math.inf), "lr"), (dict(steps=5, pose_loss="l2"), "pose_loss"),
                            (dict(steps=5, warmup_fraction=1.0), "warmup_fraction"),
                            (dict(steps=5, renderer="raycast"), "renderer"),
                            (dict(steps=5, network={"image_size": 32}), "network must be a PoseNetConfig")):
        with pytest.raises(InputError, match=message):
            TrainConfig(**kwargs)


# ---------------------------------------------------------------------- a tiny run learns


@pytest.fixture(scope="module")
def scene():
    volume = chest_phantom(shape_ijk=(32, 28, 24), spacing=(10.4, 10.4, 12.0))
    detector = demo_detector().downsample(4)  # 50 x 50 px of 12 mm, rendered at 32 x 32
    return dict(volume=volume, detector=detector, reference=reference_view(volume, detector))


@pytest.fixture(scope="module")
def tiny_run(scene):
    config = TrainConfig(network=SMALL_A, pose_range=PoseRange((20.0,) * 3, (20.0,) * 3), steps=60, batch_size=16,
                         lr=1e-3, pool_images=64, incremental=False, validation_images=32, target_points=200,
                         augmentation=NO_AUGMENTATION, validate_every=0, log_every=10, seed=0)
    events = []
    result = train(scene["volume"], scene["detector"], scene["reference"], config, progress=events.append, bar=False)
    return dict(config=config, events=events, result=result)


def test_tiny_run_beats_the_reference_pose_baseline(scene, tiny_run):
    config = tiny_run["config"]
    source = DRRSource(scene["volume"], scene["detector"], scene["reference"], image_size=32)
    _, _, poses = validation_set(source, config.pose_range, config.validation_images, config.seed)
    points = evaluation.target_points(scene["volume"], n=config.target_points, seed=config.seed)
    baseline = float(evaluation.mtre(scene["reference"].expand_as(poses), poses, points).median())
    learned = tiny_run["result"].validation
    assert learned["baseline_mtre_mm_median"] == pytest.approx(baseline, rel=1e-9)
    assert baseline > 25.0  # +-20 deg / +-20 mm poses are far from the reference view
    assert learned["mtre_mm_median"] < 0.75 * baseline, learned
    assert learned["n"] == 32 and learned["rotation_deg_median"] < 15.0


def test_progress_records_are_well_formed(tiny_run):
    events, config, result = tiny_run["events"], tiny_run["config"], tiny_run["result"]
    kinds = [e["event"] for e in events]
    assert kinds == ["start"] + ["progress"] * 6 + ["validation", "done"]
    start = events[0]
    assert start["steps"] == 60 and start["minutes"] is None and start["image_size"] == 32
    assert start["batch_size"] == 16 and start["world_size"] == 1 and start["resumed_step"] == 0
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [10, 20, 30, 40, 50, 60]
    for record in progress:
        assert set(record) == PROGRESS_FIELDS
        step = record["step"]
        assert record["steps"] == 60 and record["fraction"] == pytest.approx(step / 60)
        # the lr the step took: the schedule at the middle of step number step - 1
        assert record["lr"] == pytest.approx(config.lr * closed_form((step - 0.5) / 60, config.warmup_fraction))
        assert record["structure_loss"] is None  # no decoder
        assert record["loss"] == pytest.approx(record["pose_loss"] / config.pose_loss_scale)
        assert record["eta_s"] >= 0 and record["images_per_s"] > 0 and record["stage"] == 1
        assert record["val_mtre_mm"] is None  # no validation before the end
    assert progress[-1]["eta_s"] == 0.0
    elapsed = [e["elapsed_s"] for e in progress]
    assert elapsed == sorted(elapsed)
    validation = events[-2]
    assert validation["step"] == 60 and {k: validation[k] for k in result.validation} == result.validation
    assert events[-1]["mtre_mm_median"] == result.validation["mtre_mm_median"] and events[-1]["path"] is None
    assert result.history == progress + [validation] and result.step == 60
    json.dumps(events, allow_nan=False)  # every record is plain JSON
    assert not result.model.training


# ---------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resume_config():
    """The whole network (decoder, attention, dropout), default augmentation, a pool growing over 4 stages."""
    return TrainConfig(network=PoseNetConfig(image_size=32, backbone="small"), pose_range=PoseRange((15.0,) * 3,
                       (15.0,) * 3), steps=8, batch_size=4, pool_images=16, stages=4, validation_images=4,
                       target_points=50, augmentation=DEFAULT_AUGMENTATION, log_every=1, seed=3)


class Stop:
    """A progress callback that interrupts the run after step ``at`` (as Ctrl-C would)."""

    def __init__(self, at: int) -> None:
        self.at, self.events = at, []

    def __call__(self, record: dict) -> None:
        self.events.append(record)
        if record["event"] == "progress" and record["step"] == self.at:
            raise KeyboardInterrupt


def test_interrupted_and_resumed_run_ends_at_the_same_weights(scene, resume_config, tmp_path, capsys):
    args = (scene["volume"], scene["detector"], scene["reference"])
    # uninterrupted, validating and checkpointing at every step (neither may change the training)
    busy = dataclasses.replace(resume_config, validate_every=1e-9, checkpoint_every=1e-9)
    events = []
    whole = train(*args, busy, checkpoint_path=tmp_path / "whole.pt", progress=events.append, bar=True)
    assert "training" in capsys.readouterr().err  # the tqdm bar
    assert [e["event"] for e in events].count("checkpoint") == 8  # steps 1..7, then the final one
    assert [e["event"] for e in events].count("validation") == 8

    path = tmp_path / "run.pt"
    stop = Stop(at=4)
    with pytest.raises(KeyboardInterrupt):
        train(*args, resume_config, checkpoint_path=path, progress=stop, bar=False)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 4 and not saved["complete"] and stop.events[-1]["event"] == "checkpoint"
    resumed_events = []
    resumed = train(*args, resume_config, checkpoint_path=path, resume=True, progress=resumed_events.append, bar=False)
    assert resumed.step == 8 and resumed_events[0]["resumed_step"] == 4
    assert [e["step"] for e in resumed_events if e["event"] == "progress"] == [5, 6, 7, 8]
    assert [e["step"] for e in resumed.history if e["event"] == "progress"] == list(range(1, 9))

    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert resumed.validation["mtre_mm_median"] == pytest.approx(whole.validation["mtre_mm_median"], abs=1e-6)
    # and the run did move the weights: the resumed start was not the end already
    assert any(not torch.equal(saved["weights"][n], a[n]) for n in a if a[n].is_floating_point())


def test_resume_refuses_another_config_ct_or_missing_file(scene, resume_config, tmp_path):
    path = tmp_path / "short.pt"
    short = dataclasses.replace(resume_config, steps=1, stages=1)
    train(scene["volume"], scene["detector"], scene["reference"], short, checkpoint_path=path, bar=False)
    with pytest.raises(InputError, match="config differs: lr: 0.001 \\(checkpoint\\) vs 0.002 \\(now\\)"):
        train(scene["volume"], scene["detector"], scene["reference"], dataclasses.replace(short, lr=2e-3),
              checkpoint_path=path, resume=True, bar=False)
    other = Volume(scene["volume"].mu * 1.1, scene["volume"].affine)
    with pytest.raises(InputError, match="another CT"):
        train(other, scene["detector"], scene["reference"], short, checkpoint_path=path, resume=True, bar=False)
    with pytest.raises(InputError, match="does not exist"):
        train(scene["volume"], scene["detector"], scene["reference"], short, checkpoint_path=tmp_path / "no.pt",
              resume=True, bar=False)
    with pytest.raises(InputError, match="checkpoint_path"):
        train(scene["volume"], scene["detector"], scene["reference"], short, resume=True, bar=False)
    # a finished run resumed does no more steps and keeps its weights
    done = train(scene["volume"], scene["detector"], scene["reference"], short, checkpoint_path=path, resume=True,
                 bar=False)
    saved = torch.load(path, weights_only=True)
    assert done.step == 1 and saved["step"] == 1
    for name, value in done.model.state_dict().items():
        assert torch.equal(saved["weights"][name], value)


def test_time_budget_run_reports_its_fraction_and_stops(scene):
    config = TrainConfig(network=SMALL_A, pose_range=PoseRange((10.0,) * 3, (10.0,) * 3), minutes=0.002,
                         batch_size=2, pool_images=4, stages=2, validation_images=4, target_points=50,
                         augmentation=NO_AUGMENTATION, log_every=1000)
    events = []
    result = train(scene["volume"], scene["detector"], scene["reference"], config, progress=events.append, bar=False)
    progress = [e for e in events if e["event"] == "progress"]
    assert result.step >= 1 and progress[-1]["step"] == result.step  # the last step is always reported
    last = progress[-1]
    assert last["steps"] is None and last["fraction"] == 1.0 and last["eta_s"] == 0.0
    assert last["elapsed_s"] >= 0.12 and result.elapsed_s == last["elapsed_s"]
    assert events[0]["minutes"] == 0.002 and events[-1]["event"] == "done"
