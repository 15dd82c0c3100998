"""``model.init_from``: a new run starts from a previous run's network, with a new classifier; every mismatch is a
clear error before any data work; fine-tuning options (frozen backbone, lower backbone lr)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fermetric import engine
from fermetric.cli import cli
from fermetric.runfolder import RunFolder

QUICKSTART = "recipes/quickstart.toml"


@pytest.fixture(scope="module")
def source(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("source")
    from tests.conftest import TINY

    overrides = TINY + [f'train.cache_dir="{tmp / "cache"}"']
    _, out = engine.run_recipe(QUICKSTART, str(tmp / "run"), overrides)
    return RunFolder(out)


def _weights(folder: RunFolder, which: str = "best"):
    path = folder.best_checkpoint if which == "best" else folder.last_checkpoint
    return torch.load(path, weights_only=True)["model"]


def test_init_from_loads_backbone_and_embedding_and_records_the_source(source, tmp_path, tiny_overrides):
    # lr 0 and no weight decay: training leaves every loaded tensor as the source had it
    overrides = tiny_overrides + [f'model.init_from="{source.root}"', "train.lr=0.0", "train.weight_decay=0.0", "train.epochs=1"]
    _, out = engine.run_recipe(QUICKSTART, str(tmp_path / "target"), overrides)
    target, before = RunFolder(out), _weights(source)
    after = _weights(target, "last")
    loaded = [k for k in before if k.startswith(("backbone.", "embedding.")) and "running" not in k and "num_batches" not in k]
    assert loaded and all(torch.equal(before[k], after[k]) for k in loaded)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"]), "the classifier starts afresh"
    record = target.run_info()["init_from"]
    assert record["path"] == str(source.best_checkpoint.resolve()) and record["parts"] == "backbone+embedding"
    assert len(record["sha256"]) == 64 and record["classes"] == source.run_info()["data"]["classes"]
    # The checkpoint itself names the weights it started from (run.json is rewritten on a resume).
    meta = torch.load(target.last_checkpoint, weights_only=True)["meta"]
    assert meta["init_from"] == {"sha256": record["sha256"], "parts": "backbone+embedding"}
    assert torch.load(source.best_checkpoint, weights_only=True)["meta"]["init_from"] is None


def test_backbone_only_and_a_frozen_backbone(source, tmp_path, tiny_overrides):
    overrides = tiny_overrides + [f'model.init_from="{source.root}"', 'model.init_parts="backbone"', "train.epochs=1",
                                  "train.freeze_backbone_epochs=1", "train.weight_decay=0.0"]
    _, out = engine.run_recipe(QUICKSTART, str(tmp_path / "frozen"), overrides)
    before, after = _weights(source), _weights(RunFolder(out), "last")
    conv = [k for k in before if k.startswith("backbone.") and k.endswith("weight")]
    assert all(torch.equal(before[k], after[k]) for k in conv), "lr 0 for the backbone during the frozen epoch"
    assert not torch.equal(before["embedding.1.weight"], after["embedding.1.weight"]), "backbone only: embedding is new"
    state = torch.load(RunFolder(out).last_checkpoint, weights_only=True)
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["backbone", "head"]


def test_backbone_lr_multiplier_makes_its_own_group(tmp_path, tiny_overrides):
    _, out = engine.run_recipe(QUICKSTART, str(tmp_path / "mult"), tiny_overrides + ["train.epochs=1", "train.backbone_lr_mult=0.1",
                                                                                      'train.scheduler="none"', "train.lr=0.01"])
    groups = torch.load(RunFolder(out).last_checkpoint, weights_only=True)["optimizer"]["param_groups"]
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(0.001) and lrs["head"] == pytest.approx(0.01)


def test_a_grey_source_initialises_a_three_channel_backbone_exactly(source, tmp_path, tiny_overrides):
    """1 -> 3 input channels (a grey source into a backbone that reads the grey crop repeated, as ImageNet weights
    do): the first convolution is adapted, and on grey input it computes what the source's did."""
    import fermetric

    overrides = tiny_overrides + [f'model.init_from="{source.root}"', "backbone.in_chans=3", "train.lr=0.0",
                                  "train.weight_decay=0.0", "train.epochs=1"]
    _, out = engine.run_recipe(QUICKSTART, str(tmp_path / "rgb_in"), overrides)
    assert "adapted from 1 to 3 input channels" in RunFolder(out).log_file.read_text()
    theirs, ours = fermetric.load_model(source.root).network.eval(), fermetric.load_model(out).network.eval()
    assert ours.in_chans == 3 and theirs.in_chans == 1
    grey = torch.rand(4, 1, 48, 48) * 2 - 1
    first_theirs, first_ours = theirs.backbone.features[0], ours.backbone.features[0]  # lr 0: still as loaded
    assert first_ours.weight.shape[1] == 3
    with torch.no_grad():
        assert torch.allclose(first_theirs(grey), first_ours(grey.expand(-1, 3, -1, -1)), atol=1e-5)


def test_adapt_input_conv_is_exact_for_grey_input_both_ways():
    from fermetric.errors import FermetricError
    from fermetric.training.transfer import adapt_input_conv

    grey = torch.rand(2, 1, 9, 9)
    for c_in, c_out in ((1, 3), (3, 1)):
        weight = torch.randn(5, c_in, 3, 3)
        new = adapt_input_conv(weight, c_out)
        assert new.shape == (5, c_out, 3, 3)
        before = torch.nn.functional.conv2d(grey.expand(-1, c_in, -1, -1), weight)
        after = torch.nn.functional.conv2d(grey.expand(-1, c_out, -1, -1), new)
        assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(FermetricError, match="cannot adapt a 3-channel input convolution to 4 channels"):
        adapt_input_conv(torch.randn(5, 3, 3, 3), 4)


@pytest.mark.parametrize("override, message", [
    ("backbone.width=8", "backbone.width = 8 here, 16 in the source"),
    ('backbone.name="mobilenet_v2"', "backbone 'mobilenet_v2' here, 'fer_cnn' in the source"),
    ("crop.size=32", "input size [32, 32] here"),
    ("model.embedding_dim=32", "model.embedding_dim = 32 here, 64 in the source"),
])
def test_mismatches_are_errors_before_any_data_work(source, tmp_path, override, message):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["run", QUICKSTART, "--out", str(tmp_path / "bad"), "--set", f'model.init_from="{source.root}"',
                                      "--set", override, "--set", f'train.cache_dir="{cache}"'])
    assert result.exit_code == 2, result.output
    assert "model.init_from: the source model does not fit this recipe" in result.output and message in result.output
    assert "Traceback" not in result.output
    assert not cache.exists(), "nothing was cropped"


def test_the_source_is_loaded_from_the_bytes_that_were_hashed(source, monkeypatch):
    """run.json's sha256 must be that of the weights used: the checkpoint is read once, hashed, and loaded from those
    bytes, so a source run that rewrites best.pt in between cannot make them disagree."""
    import hashlib

    from fermetric.training import transfer

    expected = _weights(source)["classifier.weight"]
    reads, loads = [], []
    path_type, real_read_bytes, real_load = type(source.best_checkpoint), type(source.best_checkpoint).read_bytes, torch.load
    monkeypatch.setattr(path_type, "read_bytes", lambda path: reads.append(path) or real_read_bytes(path))
    monkeypatch.setattr(torch, "load", lambda f, **kw: loads.append(f) or real_load(f, **kw))
    ckpt, state, sha = transfer.load_source(source.root)
    monkeypatch.undo()
    assert reads == [ckpt] and sha == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert len(loads) == 1 and hasattr(loads[0], "read"), "loaded from the hashed bytes, not from the file again"
    assert torch.equal(state["model"]["classifier.weight"], expected)


def test_bad_sources_are_named(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "kfold" / "fold_00").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for source, message in [(tmp_path / "nowhere", "neither a run folder nor a checkpoint file"),
                            (tmp_path / "junk.pt", "model.init_from: " + str(tmp_path / "junk.pt") + " is damaged or not a fermetric checkpoint"),
                            (tmp_path / "kfold", "is a k-fold run; name one fold's folder"),
                            (tmp_path / "empty", "holds no checkpoint")]:
        result = CliRunner().invoke(cli, ["run", QUICKSTART, "--out", str(tmp_path / "x"), "--set", f'model.init_from="{source}"'])
        assert result.exit_code == 2 and message in result.output, result.output


def test_channel_check_reads_the_backbones_not_the_crops():
    """meta["in_chans"] is the crops' channels (1 for grey); what must fit is the backbone's own in_chans: a grey
    run with a 3-channel backbone (ImageNet weights) is a valid source for another such run."""
    from fermetric.errors import RecipeError
    from fermetric.training.transfer import check_compatible

    meta = {"backbone": {"name": "mobilenet_v2", "in_chans": 3}, "input_size": [96, 96], "in_chans": 1}
    recipe = {"backbone": {"name": "mobilenet_v2", "in_chans": 3}, "model": {"embedding_dim": 128}}
    check_compatible(meta, recipe, (96, 96), 3, "backbone")  # no error
    check_compatible(meta, {**recipe, "backbone": {"name": "mobilenet_v2", "in_chans": 1}}, (96, 96), 1, "backbone")
    with pytest.raises(RecipeError, match="backbone.in_chans = 4 here, 3 in the source"):
        check_compatible(meta, {**recipe, "backbone": {"name": "mobilenet_v2", "in_chans": 4}}, (96, 96), 4, "backbone")


def test_an_ablation_checks_every_cells_source_before_the_first_trains(source, tmp_path):
    """A grid over model.init_from with one source that does not fit (another backbone width) stops with exit 2
    before any cell trains, naming the key."""
    out = tmp_path / "abl"
    result = CliRunner().invoke(cli, ["ablate", QUICKSTART, "--out", str(out), "--set", f'train.cache_dir="{tmp_path / "c"}"',
                                      "--set", "backbone.width=8",
                                      "--grid", f'model.init_from="",\"{source.root}\"'])
    assert result.exit_code == 2, result.output
    assert "model.init_from" in result.output and "backbone.width = 8 here, 16 in the source" in result.output
    assert not (tmp_path / "c").exists() and not out.exists(), "nothing trained, nothing cropped"
