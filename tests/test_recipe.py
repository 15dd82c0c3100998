"""Recipe loading: extends, overrides, and every validation error named in the recipe reference."""

from __future__ import annotations

import textwrap

import pytest

from fermetric import recipe as R
from fermetric.errors import RecipeError

BASE = """
[data]
name = "synthetic"
subjects = 6

[crop]
name = "au_partial"
landmarks = "dataset"

[backbone]
name = "fer_cnn"

[[loss]]
name = "cross_entropy"

[[loss]]
name = "emlf"
weight = 0.5

[train]
epochs = 5
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_extends_deep_merges_tables_and_replaces_arrays(tmp_path):
    write(tmp_path, "base.toml", BASE)
    child = write(tmp_path, "child.toml", """
        extends = "base.toml"
        [train]
        lr = 0.01
        [[loss]]
        name = "triplet"
    """)
    recipe = R.load(child)
    assert recipe["train"] == {"epochs": 5, "lr": 0.01}
    assert [t["name"] for t in recipe["loss"]] == ["triplet"]
    assert "extends" not in recipe


def test_extends_chain_and_cycle(tmp_path):
    write(tmp_path, "a.toml", 'extends = "b.toml"\n[train]\nepochs = 1\n')
    write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        R.load(tmp_path / "a.toml")


def test_overrides_scalars_arrays_and_append(tmp_path):
    path = write(tmp_path, "r.toml", BASE)
    recipe = R.load(path, ["train.epochs=3", "loss.1.weight=0.2", "loss.2.name=center", "crop.regions=[\"mouth\"]", "eval.protocol=kfold"])
    assert recipe["train"]["epochs"] == 3
    assert recipe["loss"][1]["weight"] == 0.2
    assert recipe["loss"][2] == {"name": "center"}
    assert recipe["crop"]["regions"] == ["mouth"]
    assert recipe["eval"]["protocol"] == "kfold"  # a bare word is a string


@pytest.mark.parametrize("item, message", [
    ("train.epochs", "expected KEY=VALUE"),
    ("loss.x.weight=1", "must be an index"),
    ("loss.7.weight=1", "out of range"),
])
def test_bad_overrides(tmp_path, item, message):
    path = write(tmp_path, "r.toml", BASE)
    with pytest.raises(RecipeError, match=message):
        R.load(path, [item])


def test_weight_zero_switches_a_term_off(tmp_path):
    recipe = R.load(write(tmp_path, "r.toml", BASE), ["loss.1.weight=0"])
    assert [t["name"] for t in R.losses_of(recipe)] == ["cross_entropy"]


def test_valid_recipe_gets_defaults(tmp_path, host):
    recipe = R.validate(R.load(write(tmp_path, "r.toml", BASE)), host)
    assert recipe["train"]["batch_size"] == 64
    assert recipe["crop"]["on_no_face"] == "fallback"
    assert recipe["loss"][0]["weight"] == 1.0


@pytest.mark.parametrize("override, message", [
    ('loss.1.name="emfl"', r"unknown loss 'emfl'; did you mean 'emlf'"),
    ('crop.name="au_parital"', r"did you mean 'au_partial'"),
    ('backbone.name="resnet"', r"unknown backbone 'resnet'"),
    ("loss.1.pos_margn=0.1", r"loss.1.pos_margn: loss 'emlf' has no parameter 'pos_margn'; did you mean 'pos_margin'"),
    ('loss.1.neg_margin="wide"', r"loss.1.neg_margin: loss 'emlf' expects float.*, got str"),
    ("train.epochs=2.5", r"train.epochs: expected int, got float"),
    ("train.epoch=2", r"train.epoch: unknown key; did you mean 'train.epochs'"),
    ('train.optimizer="lion"', r"expected one of adamw, adam, sgd"),
    ('crop.on_no_face="ignore"', r"expected one of fallback, skip, error"),
    ('data.name="manifest"', r"data.manifest: dataset 'manifest' needs parameter 'manifest'"),
    ('data.seeds=3', r"data.seeds: dataset 'synthetic' has no parameter 'seeds'; did you mean 'seed'"),
    ('loss.0.weight="high"', r"loss.0.weight: expected float"),
    ('loss.1.miner="hardest"', r"unknown miner 'hardest'"),
    ("backbone.width=true", r"expects int, got bool"),
])
def test_validation_errors_name_the_key(tmp_path, host, override, message):
    recipe = R.load(write(tmp_path, "r.toml", BASE), [override])
    with pytest.raises(RecipeError, match=message):
        R.validate(recipe, host)


def test_missing_required_parameter(tmp_path, host):
    recipe = R.load(write(tmp_path, "r.toml", BASE), ['data.name="manifest"'])
    with pytest.raises(RecipeError, match=r"data.manifest: dataset 'manifest' needs parameter 'manifest'"):
        R.validate(recipe, host)


def test_missing_data_path_is_reported(tmp_path, host):
    recipe = R.load(write(tmp_path, "r.toml", BASE), ['data.name="manifest"', f'data.manifest="{tmp_path}/nope.csv"', "data.subjects=0"])
    del recipe["data"]["subjects"]
    with pytest.raises(RecipeError, match=r"data.manifest: path does not exist: .*nope.csv"):
        R.validate(recipe, host)


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.toml", "[train]\nepochs = = 3\n")
    with pytest.raises(RecipeError, match=r"bad.toml: TOML syntax error: .*line 2"):
        R.load(path)


def test_missing_tables_and_unknown_top_level(tmp_path, host):
    with pytest.raises(RecipeError, match=r"missing table \[backbone\]"):
        R.validate(R.load(write(tmp_path, "a.toml", '[data]\nname = "synthetic"\n')), host)
    with pytest.raises(RecipeError, match=r"trian: unknown top-level key; did you mean 'train'"):
        R.validate(R.load(write(tmp_path, "b.toml", BASE + "\n[trian]\nepochs = 1\n")), host)
    with pytest.raises(RecipeError, match="nothing to optimise"):
        R.validate(R.load(write(tmp_path, "c.toml", BASE), ["loss.0.weight=0", "loss.1.weight=0"]), host)


def test_bundled_recipes_validate(host):
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.toml"))
    assert recipes, "no recipes bundled"
    for path in recipes:
        R.validate(R.load(path), host, check_paths=False)


def test_resolved_recipe_round_trips_through_toml(tmp_path, host):
    import tomllib

    recipe = R.validate(R.load(write(tmp_path, "r.toml", BASE)), host)
    assert tomllib.loads(R.dumps(recipe)) == recipe


def test_naming_another_component_starts_its_table_afresh(tmp_path):
    write(tmp_path, "base.toml", BASE)
    child = write(tmp_path, "child.toml", 'extends = "base.toml"\n[crop]\nname = "full_face"\nsize = 64\n')
    assert R.load(child)["crop"] == {"name": "full_face", "size": 64}
    recipe = R.load(tmp_path / "base.toml", ["loss.1.margin=0.3", "loss.1.name=triplet", 'crop.name="full_face"'])
    assert recipe["loss"][1] == {"name": "triplet", "weight": 0.5}
    assert recipe["crop"] == {"name": "full_face"}
    same = R.load(tmp_path / "base.toml", ["loss.1.name=emlf"])
    assert same["loss"][1] == {"name": "emlf", "weight": 0.5}


def test_augment_keys_are_checked_and_merged_onto_defaults(tmp_path, host):
    path = write(tmp_path, "r.toml", BASE)
    recipe = R.validate(R.load(path, ["train.augment={ flip = false }"]), host)
    assert recipe["train"]["augment"] == {"flip": False, "shift": 0.1, "rotate": 10.0, "scale": 0.1}
    with pytest.raises(RecipeError, match=r"train.augment.rotation: unknown key; did you mean 'train.augment.rotate'"):
        R.validate(R.load(path, ["train.augment={ rotation = 15 }"]), host)
    with pytest.raises(RecipeError, match=r"train.augment.flip: expected bool"):
        R.validate(R.load(path, ["train.augment={ flip = 1 }"]), host)


def test_miner_parameters_are_checked(tmp_path, host):
    path = write(tmp_path, "r.toml", BASE)
    R.validate(R.load(path, ['loss.1.miner={ name = "multi_similarity", epsilon = 0.2 }']), host)
    with pytest.raises(RecipeError, match=r"loss.1.miner.epsilom: miner 'multi_similarity' has no parameter 'epsilom'; did you mean 'epsilon'"):
        R.validate(R.load(path, ['loss.1.miner={ name = "multi_similarity", epsilom = 0.1 }']), host)
