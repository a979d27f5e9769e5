from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest
import torch

from shared.cases import CaseCache
from shared.errors import ZeusError
from shared.instructions import PRESETS
from shared.splits import load_splits
from stage2_segment.config import TrainConfig
from stage2_segment.data import SliceDataset
from stage2_segment.features import FeatureCache
from stage2_segment.instructions import InstructionTable
from stage2_segment.losses import union_loss
from stage2_segment.modeling.encoders import FrozenImageEncoder
from stage2_segment.modeling.segmenter import SegmenterConfig, ZeusSegmenter
from stage2_segment.predict import Predictor
from stage2_segment.runs import cpu_has_bf16
from stage2_segment.train import Trainer, prepare_training_data

TAG = PRESETS["template"].tag


def test_samples_carry_embeddings_instructions_and_class_labels(stage2_dataset):
    cases = CaseCache(stage2_dataset, 256)
    features = FeatureCache(cases, FrozenImageEncoder())
    table = InstructionTable(stage2_dataset.manifest, TAG)
    data = SliceDataset(["demo_001"], cases, features, table)
    assert len(data) == 3
    sample = data[1]
    assert sample["inputs"].shape == (3, 256, 64, 64) and sample["inputs"].dtype == torch.float32
    assert sample["text"].shape == (4, 4, 384)  # (3 modalities + union) x 4 targets x 384
    assert sample["label"].shape == (256, 256) and sample["label"].dtype == torch.int64
    assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3, 4}
    # label value v of the manifest is class index v here (targets are 1..4 in order)
    raw = cases.label("demo_001")[1]
    assert torch.equal(sample["label"], torch.from_numpy(raw.astype(np.int64)))


def test_context_samples_are_the_neighbouring_slices_of_the_same_version(stage2_dataset):
    cases = CaseCache(stage2_dataset, 256)
    features = FeatureCache(cases, FrozenImageEncoder())
    table = InstructionTable(stage2_dataset.manifest, TAG)
    data = SliceDataset(["demo_001"], cases, features, table, context=1)
    volume = np.asarray(features.load("demo_001"), np.float32)  # 3 slices
    assert [data.neighbours(z, 3) for z in range(3)] == [[0, 1], [0, 2], [1, 2]]  # the edge slice repeats
    for z, rows in enumerate(([0, 1], [0, 2], [1, 2])):
        sample = data[z]
        assert sample["context"].shape == (2, 3, 256, 64, 64)
        assert torch.equal(sample["context"], torch.from_numpy(volume[rows]))
        assert torch.equal(sample["inputs"], torch.from_numpy(volume[z]))
    assert "context" not in SliceDataset(["demo_001"], cases, features, table)[0]


@pytest.mark.parametrize("decoder", ["per-target", "joint"])
@pytest.mark.parametrize("fusion", ["early", "hybrid", "late"])
def test_each_fusion_gives_union_logits_and_single_modality_works(fusion, decoder):
    for modalities in (3, 1):
        config = SegmenterConfig(fusion=fusion, num_modalities=modalities, num_targets=4, decoder=decoder)
        model = ZeusSegmenter(config)
        images = torch.randn(2, 1 if fusion == "early" else modalities, 256, 64, 64)
        logits = model(images, torch.randn(2, modalities + 1, 4, 384))
        assert logits.shape == (2, 5, 256, 256)
    counts = model.parameter_counts()
    assert 3.9e6 < counts["trainable"] < 4.2e6 and counts["frozen"] > 0.55e6  # unused decoder heads frozen


def test_late_fusion_activation_checkpointing_keeps_the_gradients():
    torch.manual_seed(0)
    plain = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=2, num_targets=2, checkpoint_modalities=False))
    checkpointed = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=2, num_targets=2))
    checkpointed.load_state_dict(plain.state_dict())
    images, text = torch.randn(1, 2, 256, 64, 64), torch.randn(1, 3, 2, 384)
    labels = torch.randint(0, 3, (1, 256, 256))
    for model in (plain, checkpointed):
        model.train()
        union_loss(model(images, text), labels).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_text_none_uses_class_tokens():
    model = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=2, num_targets=3, use_text=False))
    assert model(torch.randn(1, 2, 256, 64, 64)).shape == (1, 4, 256, 256)
    with pytest.raises(ValueError, match="pass text embeddings"):
        ZeusSegmenter(SegmenterConfig(num_modalities=2, num_targets=3))(torch.randn(1, 2, 256, 64, 64))


def _trainer(dataset, **overrides) -> Trainer:
    config = TrainConfig(
        **{
            "fusion": "early",
            "text": "template",
            "epochs": 2,
            "batch_size": 2,
            "lr": 1e-3,
            "slices_per_epoch": 2,
            "warmup_steps": 1,
            **overrides,
        }
    )
    return Trainer(prepare_training_data(dataset, config, progress=False), config, progress=False)


def _killed_after_first_epoch(trainer: Trainer) -> None:
    """Run ``trainer`` until its first epoch's checkpoint and log row are written, then stop it as a kill would."""
    write_log = trainer._log

    def log_then_die(*args, **kwargs):
        write_log(*args, **kwargs)
        raise KeyboardInterrupt

    trainer._log = log_then_die
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


@pytest.mark.parametrize(("copies", "ema_decay"), [(0, 0.0), (2, 0.0), (0, 0.9)])
def test_resume_continues_exactly(stage2_dataset, copies, ema_decay):
    """Three steps per epoch, resumed after the first epoch: bitwise the same as a straight run, also with
    augmentation drawing a version of each slice per epoch, and with a moving average of the weights."""
    steps = {
        "batch_size": 1,
        "slices_per_epoch": 3,
        "epochs": 3,
        "warmup_steps": 2,
        "augment_copies": copies,
        "ema_decay": ema_decay,
    }
    straight = _trainer(stage2_dataset, run_name="straight", **steps)
    assert straight.steps_per_epoch == 3
    drawn = set()
    for epoch in range(3):
        straight.train_set.set_epoch(epoch)
        drawn |= {straight.train_set.variant(i) for i in range(len(straight.train_set))}
    assert drawn == ({0, 1, 2} if copies else {0})  # augmentation is active
    straight.fit()
    _killed_after_first_epoch(_trainer(stage2_dataset, run_name="resumed", **steps))
    resumed = _trainer(stage2_dataset, run_name="resumed", **steps)
    resumed.resume()
    assert resumed.epoch == 1
    resumed.fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    straight_average, resumed_average = straight.predicting_model.state_dict(), resumed.predicting_model.state_dict()
    for (name, a), b in zip(straight_average.items(), resumed_average.values(), strict=True):
        assert torch.equal(a, b), name
    if ema_decay:
        assert int(resumed.ema.n_averaged) == 9  # every step of the 3 epochs, across the resume
        assert not torch.equal(
            straight_average["mask_decoder.output_upscaling.0.weight"],
            straight.model.state_dict()["mask_decoder.output_upscaling.0.weight"],
        )
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    rows = list(csv.DictReader((resumed.run_dir / "log.csv").open(encoding="utf-8")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    with pytest.raises(ZeusError, match="pass --resume to continue"):
        _trainer(stage2_dataset, run_name="straight", **steps).fit()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 5}, "--epochs: the run has 3, now 5"),
        ({"lr": 1e-4}, "--lr: the run has 0.001, now 0.0001"),
        ({"fusion": "late"}, "--fusion: the run has 'early', now 'late'"),
        ({"batch_size": 2}, "--batch-size: the run has 1, now 2"),
        ({"decoder": "joint"}, "--decoder: the run has 'per-target', now 'joint'"),
        ({"slice_context": 0}, "--slice-context: the run has 1, now 0"),
        ({"precision": "bf16"}, "--precision: the run has 'auto', now 'bf16'"),
        ({"ema_decay": 0.99}, "--ema-decay: the run has 0.0, now 0.99"),
    ],
)
def test_resume_with_other_settings_is_refused_by_name(stage2_dataset, change, message):
    steps = {"batch_size": 1, "slices_per_epoch": 3, "epochs": 3, "warmup_steps": 2}
    _killed_after_first_epoch(_trainer(stage2_dataset, run_name="run", **steps))
    other = _trainer(stage2_dataset, run_name="run", **{**steps, **change})
    with pytest.raises(ZeusError, match=re.escape(message)):
        other.resume()


@pytest.mark.parametrize("slice_context", [0, 1])
def test_device_resident_batches_train_exactly_as_the_loader(stage2_dataset, slice_context):
    """The path for GPUs (the training set held on the device, batches indexed there), run on the CPU."""
    steps = {
        "batch_size": 2,
        "slices_per_epoch": 5,
        "epochs": 2,
        "fusion": "late",
        "decoder": "joint",
        "augment_copies": 1,
        "slice_context": slice_context,
    }
    loader = _trainer(stage2_dataset, run_name="loader", data_on_device=False, **steps)
    resident = _trainer(stage2_dataset, run_name="resident", data_on_device=True, **steps)
    assert loader.device_data is None and resident.device_data is not None
    first = next(iter(loader._batches()))
    same = next(iter(resident._batches()))
    keys = ("inputs", "text", "label", "index", "context") if slice_context else ("inputs", "text", "label", "index")
    assert set(first) == set(same) == set(keys)
    for key in keys:
        assert torch.equal(first[key], same[key]), key
    for trainer in (loader, resident):
        trainer.fit()
    for (name, a), b in zip(loader.model.state_dict().items(), resident.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert _log(loader) == _log(resident)


def _log(trainer) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in trainer.run.read_log()]


def test_without_validation_cases_best_is_the_last_epoch(stage2_dataset):
    trainer = _trainer(stage2_dataset, run_name="no_val", epochs=2, fusion="late")
    trainer.val_set = None
    trainer.fit()
    best = torch.load(trainer.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert best["epoch"] == 2


def test_every_trainable_parameter_gets_a_gradient():
    """What DDP needs: the decoder's unused heads (IoU head, hypernetworks 1-3) are frozen, not trained."""
    for fusion, decoder in itertools.product(("early", "hybrid", "late"), ("per-target", "joint")):
        model = ZeusSegmenter(SegmenterConfig(fusion=fusion, num_modalities=2, num_targets=2, decoder=decoder))
        model.train()
        images = torch.randn(1, 1 if fusion == "early" else 2, 256, 64, 64)
        union_loss(model(images, torch.randn(1, 3, 2, 384)), torch.randint(0, 3, (1, 256, 256))).backward()
        without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert without == [], (fusion, decoder, without)
        frozen = {
            n.split(".")[1] for n, p in model.named_parameters() if n.startswith("mask_decoder") and not p.requires_grad
        }
        assert frozen == {"iou_prediction_head", "output_hypernetworks_mlps"}


def test_run_folder_and_best_checkpoint_by_validation_dice(stage2_dataset):
    trainer = _trainer(stage2_dataset, run_name="run", epochs=2)
    result = trainer.fit()
    run = trainer.run_dir
    info = json.loads((run / "config.json").read_text(encoding="utf-8"))
    splits = load_splits(stage2_dataset.name)
    assert info["train_cases"] == list(splits.fold(0)[0]) and info["val_cases"] == list(splits.fold(0)[1])
    assert info["parameters"]["trainable"] > 3.9e6 and len(info["git_revision"]) > 0
    rows = list(csv.DictReader((run / "log.csv").open(encoding="utf-8")))
    assert {"train_loss", "val_dice", "dice_liver", "dice_spleen", "lr"} <= set(rows[0])
    best = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    dices = [float(r["val_dice"]) for r in rows]
    assert best["best_dice"] == pytest.approx(max(dices), abs=1e-6)
    assert best["epoch"] == 1 + int(np.argmax(dices))
    assert result.best_val_dice == pytest.approx(max(dices), abs=1e-6)
    # a checkpoint loads strictly into a fresh model
    fresh = ZeusSegmenter(SegmenterConfig(**best["segmenter"]))
    fresh.load_state_dict(best["model"], strict=True)


def test_the_moving_average_is_what_validates_is_kept_and_predicts(stage2_dataset):
    """With --ema-decay d, after steps giving trained weights w1, w2, w3 the average is w1, then
    d * e + (1 - d) * w; best.pt's model holds it (what `zeus predict` loads), its trained weights beside it."""
    decay = 0.5
    trainer = _trainer(stage2_dataset, run_name="ema", epochs=1, slices_per_epoch=3, batch_size=1, ema_decay=decay)
    name = "mask_decoder.output_upscaling.0.weight"
    trained, step = [], trainer._step

    def step_and_record(batch):
        loss = step(batch)
        trained.append(trainer.model.state_dict()[name].clone())
        return loss

    trainer._step = step_and_record
    trainer.fit()
    assert len(trained) == 3 and not torch.equal(trained[0], trained[2])
    expected = trained[0]
    for weights in trained[1:]:
        expected = decay * expected + (1 - decay) * weights
    average = trainer.predicting_model.state_dict()[name]
    torch.testing.assert_close(average, expected, rtol=1e-6, atol=1e-7)
    best = torch.load(trainer.run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert torch.equal(best["model"][name], average) and torch.equal(best["trained"][name], trained[-1])
    assert best["ema_updates"] == 3
    (row,) = trainer.run.read_log()
    validated = trainer.validate(model=trainer.model)  # the log keeps the trained weights' Dice beside the average's
    assert row["val_dice_trained"] == pytest.approx(float(np.nanmean(validated)), abs=1e-6)
    assert row["val_dice"] == pytest.approx(float(np.nanmean(trainer.validate())), abs=1e-6)
    predictor = Predictor.from_run(trainer.run_dir)
    assert torch.equal(predictor.model.state_dict()[name], average)


def test_unet_baseline_trains_on_the_same_slices_without_encoder_or_text(stage2_dataset):
    trainer = _trainer(stage2_dataset, model="unet", epochs=1, lr=1e-3)
    assert trainer.features is None and trainer.train_set.instructions is None
    sample = trainer.train_set[0]
    assert sample["inputs"].shape == (3, 256, 256) and "text" not in sample
    result = trainer.fit()
    assert result.epochs == 1 and trainer.run_dir.name == "unet__fold0"
    assert trainer.model.parameter_counts()["frozen"] == 0


@pytest.mark.slow
def test_overfits_a_tiny_case(stage2_dataset):
    trainer = _trainer(  # the original slice only: augmented copies would move the one slice it is to memorise
        stage2_dataset,
        run_name="overfit",
        epochs=50,
        lr=3e-4,
        slices_per_epoch=1,
        batch_size=1,
        warmup_steps=3,
        augment_copies=0,
    )
    trainer.train_set.index = [("demo_001", 1)]  # one slice with all four organs
    trainer.val_set.index = [("demo_001", 1)]
    trainer.fit()
    dice = trainer.validate()
    assert np.nanmean(dice) > 0.9, dice


DDP_SCRIPT = """
import sys

import torch

from shared.manifest import resolve_dataset
from stage2_segment.config import TrainConfig
from stage2_segment.runs import pick_device
from stage2_segment.train import Distributed, Trainer, prepare_training_data

dataset, out = resolve_dataset(sys.argv[1]), sys.argv[2]
config = TrainConfig(
    fusion="late", text="template", epochs=3, batch_size=1, slices_per_epoch=2, warmup_steps=1, run_name="ddp"
)
device = pick_device()
distributed = Distributed.setup(device)
data = prepare_training_data(dataset, config, device=device, distributed=distributed, progress=False)
trainer = Trainer(data, config, device=device, distributed=distributed, progress=False)
initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
trainer.fit()
torch.save({"initial": initial, "final": trainer.model.state_dict()}, f"{out}/rank{distributed.rank}.pt")
"""


@pytest.mark.slow
def test_ddp_with_torchrun_on_cpu(stage2_dataset, tmp_path):
    """torchrun, 2 processes, gloo, late fusion (activation checkpointing): 3 steps per rank; both ranks hold the
    same trained weights at the end, and rank 0 alone validated and wrote the run."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"),
        *(str(script), str(stage2_dataset.root), str(tmp_path)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(command, capture_output=True, encoding="utf-8", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", map_location="cpu", weights_only=True) for r in (0, 1)]
    trained = [k for k, v in ranks[0]["final"].items() if not torch.equal(v, ranks[0]["initial"][k])]
    assert len(trained) > 50  # the decoder really trained
    for key, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][key]), key
    run = tmp_path / "home" / "runs" / stage2_dataset.name / "ddp"
    rows = list(csv.DictReader((run / "log.csv").open(encoding="utf-8")))
    assert len(rows) == 3 and all(r["val_dice"] != "" for r in rows)
    best = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    for key, value in best["model"].items():
        assert torch.equal(value, ranks[0]["final"][key]), key


def test_the_learning_rate_scales_with_the_batch_when_asked(stage2_dataset):
    assert TrainConfig(batch_size=16, lr=3e-4).effective_lr == 3e-4
    assert TrainConfig(batch_size=16, lr=3e-4, lr_scaling="linear").effective_lr == pytest.approx(1.2e-3)
    assert TrainConfig(batch_size=16, lr=3e-4, lr_scaling="sqrt").effective_lr == pytest.approx(6e-4)
    assert TrainConfig(batch_size=1, lr=3e-4, lr_scaling="sqrt").effective_lr == pytest.approx(1.5e-4)
    with pytest.raises(ZeusError, match="--lr-scaling must be one of"):
        TrainConfig(lr_scaling="cubic")
    trainer = _trainer(stage2_dataset, batch_size=8, lr=1e-3, lr_scaling="linear")
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(2e-3)


def test_zeus_defaults_to_the_measured_recipe_and_other_models_to_none_of_it():
    default = TrainConfig()
    assert (default.augment_copies, default.slice_context) == (2, 1)
    assert default.name == "late__text-instructions__fold0"
    assert (
        TrainConfig(augment_copies=0, slice_context=3).augment_copies,
        TrainConfig(slice_context=3).slice_context,
    ) == (0, 3)
    for model in ("unet", "litemedsam-boxes"):  # neither reads neighbouring slices nor trains on augmented copies
        config = TrainConfig(model=model)
        assert (config.augment_copies, config.slice_context) == (0, 0)
    with pytest.raises(ZeusError, match="--slice-context is an input of the Zeus segmenter"):
        TrainConfig(model="unet", slice_context=1)
    # the resolved values are what config.json records, so a run reads back as it was trained
    assert TrainConfig.from_json(default.to_json()) == default
    # a run written before these options existed ran without them, whatever today's defaults
    joint = TrainConfig(decoder="joint").to_json()
    old = {k: v for k, v in joint.items() if k not in ("decoder", "augment_copies", "slice_context")}
    restored = TrainConfig.from_json(old)
    assert (restored.decoder, restored.augment_copies, restored.slice_context) == ("per-target", 0, 0)
    # ... and before --encoder-precision its embeddings were encoded in fp32
    older = {k: v for k, v in old.items() if k != "encoder_precision"}
    assert (default.encoder_precision, TrainConfig.from_json(older).encoder_precision) == ("auto", "fp32")
    with pytest.raises(ZeusError, match="--encoder-precision must be one of"):
        TrainConfig(encoder_precision="fp16")


def test_the_cache_encodes_in_its_precision_and_bf16_stays_close_to_fp32(stage2_dataset):
    cases = CaseCache(stage2_dataset, 256)
    encoder = FrozenImageEncoder()
    fp32, bf16 = (FeatureCache(cases, encoder, precision=p, compile=False) for p in ("fp32", "bf16"))
    assert FeatureCache(cases, encoder).precision == ("bf16" if cpu_has_bf16() else "fp32")  # auto, on the CPU
    pixels = cases.load("demo_001", with_label=False).image[:1, 1:2]  # one modality, one slice
    a, b = (torch.from_numpy(cache._compute(pixels).astype(np.float32)) for cache in (fp32, bf16))
    assert a.shape == b.shape == (1, 1, 256, 64, 64)
    assert not torch.equal(a, b)  # the encoder really ran in bf16
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=2)  # per embedding position
    assert cosine.median() > 0.99 and cosine.min() > 0.9
    with pytest.raises(ValueError, match="must be auto, fp32 or bf16"):
        FeatureCache(cases, encoder, precision="fp16")


@pytest.mark.slow
def test_a_compiled_step_computes_the_eager_loss_and_gradients_and_trains(stage2_dataset):
    torch.manual_seed(0)
    model = ZeusSegmenter(SegmenterConfig(fusion="late", num_modalities=1, num_targets=2, decoder="joint"))
    params = [p for p in model.parameters() if p.requires_grad]
    images, text = torch.randn(2, 1, 256, 64, 64), torch.randn(2, 2, 2, 384)
    label = torch.randint(0, 3, (2, 256, 256))
    eager_loss = union_loss(model(images, text), label)
    eager = torch.autograd.grad(eager_loss, params)
    compiled_loss = union_loss(torch.compile(model)(images, text), label)
    compiled = torch.autograd.grad(compiled_loss, params)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
    steps = {"batch_size": 2, "slices_per_epoch": 4, "epochs": 1, "fusion": "late", "decoder": "joint"}
    trainer = _trainer(stage2_dataset, run_name="compiled", precision="fp32", compile=True, **steps)
    assert trainer.ddp_model is not trainer.model  # the step runs the compiled graph
    trainer.fit()
    assert np.isfinite(trainer.run.read_log()[0]["train_loss"])
