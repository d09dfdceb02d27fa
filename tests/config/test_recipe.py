"""Recipes: typed loading, extends, overrides, and errors that name the file and key path."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from facedistill.config import load_recipe
from facedistill.config.recipe import Recipe
from facedistill.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_defaults_and_types(tmp_path):
    path = write(tmp_path, "r.yaml", {"name": "x", "train": {"epochs": 3}, "optim": {"lr": 1},
                                      "loss": {"distill": {"type": "none"}}})
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    assert r.train.epochs == 3.0 and isinstance(r.train.epochs, float)
    assert r.optim.lr == 1.0
    assert r.loss.distill.type == "none" and r.student.arch == "mobilefacenet"


def test_unknown_key_names_file_path_and_close_key(tmp_path):
    path = write(tmp_path, "r.yaml", {"train": {"epocs": 3}, "loss": {"distill": {"type": "none"}}})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert str(path) in msg and "train.epocs" in msg and "train.epochs" in msg


def test_unknown_nested_loss_key(tmp_path):
    path = write(tmp_path, "r.yaml", {"loss": {"distill": {"iled": {"roh": 0.3}}}})
    with pytest.raises(RecipeError, match=r"loss\.distill\.iled\.roh.*loss\.distill\.iled\.rho"):
        load_recipe(path, check_files=False)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "r.yaml", {"data": {"batch_size": "big"}, "loss": {"distill": {"type": "none"}}})
    with pytest.raises(RecipeError, match=r"data\.batch_size.*int"):
        load_recipe(path)
    path = write(tmp_path, "r2.yaml", {"data": {"batch_size": True}, "loss": {"distill": {"type": "none"}}})
    with pytest.raises(RecipeError, match=r"data\.batch_size"):
        load_recipe(path)


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "r.yaml", "name: a\ntrain: {epochs: [1,\n")
    with pytest.raises(RecipeError, match=r"line \d+"):
        load_recipe(path)


def test_yaml_tags_cannot_run_code(tmp_path):
    path = write(tmp_path, "r.yaml", "name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(RecipeError):
        load_recipe(path)


def test_extends_merges_and_child_wins(tmp_path):
    write(tmp_path, "base.yaml", {"name": "base", "train": {"epochs": 5, "seed": 3},
                                  "loss": {"distill": {"type": "none"}}})
    child = write(tmp_path, "child.yaml", {"extends": "base.yaml", "train": {"epochs": 2}})
    r = load_recipe(child)
    assert r.name == "base" and r.train.epochs == 2 and r.train.seed == 3


def test_extends_cycle(tmp_path):
    write(tmp_path, "a.yaml", {"extends": "b.yaml"})
    b = write(tmp_path, "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(b)


def test_set_overrides(tmp_path):
    path = write(tmp_path, "r.yaml", {"loss": {"distill": {"type": "none"}}})
    r = load_recipe(path, ["train.epochs=7", "optim.optimizer=adamw", "data.val=null"])
    assert r.train.epochs == 7 and r.optim.optimizer == "adamw" and r.data.val is None
    with pytest.raises(RecipeError, match="train.epohcs"):
        load_recipe(path, ["train.epohcs=1"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        load_recipe(path, ["train.epochs"])


def test_semantic_errors_name_the_key(tmp_path):
    cases = [
        ({"loss": {"distill": {"type": "unifed"}}, "teacher": {"type": "onnx", "onnx": "x.onnx"}},
         r"loss\.distill\.type.*unified"),
        ({"loss": {"distill": {"lambda_iled": -1.0}}, "teacher": {"type": "onnx", "onnx": "x.onnx"}},
         r"lambda_iled"),
        ({"loss": {"distill": {"type": "unified"}}}, r"teacher\.type"),
        ({"teacher": {"type": "torch", "checkpoint": "missing.pt"}}, r"teacher\.checkpoint.*does not exist"),
        ({"student": {"arch": "iresnet19"}, "loss": {"distill": {"type": "none"}}}, r"student\.arch.*iresnet18"),
        ({"optim": {"optimizer": "adam"}, "loss": {"distill": {"type": "none"}}}, r"optim\.optimizer"),
    ]
    for i, (data, pattern) in enumerate(cases):
        path = write(tmp_path, f"r{i}.yaml", data)
        with pytest.raises(RecipeError, match=pattern):
            load_recipe(path, check_files=True)


def test_hash_ignores_name_and_tracks_content(tmp_path):
    a = load_recipe(write(tmp_path, "a.yaml", {"name": "a", "loss": {"distill": {"type": "none"}}}))
    b = load_recipe(write(tmp_path, "b.yaml", {"name": "b", "loss": {"distill": {"type": "none"}}}))
    c = load_recipe(write(tmp_path, "c.yaml", {"name": "a", "train": {"seed": 1}, "loss": {"distill": {"type": "none"}}}))
    assert a.hash() == b.hash() != c.hash()
    assert yaml.safe_load(a.to_yaml())["name"] == "a"


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(RECIPES)))
def test_shipped_recipes_load(path):
    r = load_recipe(path, check_files=False)
    assert r.name


def test_student_recipes_differ_only_in_loss():
    base = None
    for path in sorted((RECIPES / "quickstart").glob("*.yaml")):
        if path.stem in ("base", "teacher"):
            continue
        d = load_recipe(path, check_files=False).to_dict()
        d.pop("name")
        d["loss"].pop("distill")
        base = base or d
        assert d == base, path


NO_TEACHER = "loss:\n  distill:\n    type: none\n"


def test_several_training_sources_and_precision(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(NO_TEACHER + "data:\n  train:\n    - data/lfw\n    - {path: data/utk, weight: 0.2, max_border: 0.4}\n"
                    "train:\n  precision: fp32\n")
    with pytest.raises(Exception, match="every `data.train` source a weight"):
        load_recipe(path, check_files=False)
    path.write_text(NO_TEACHER + "data:\n  train:\n    - {path: data/lfw, weight: 1}\n    - {path: data/utk, weight: 0.2, "
                    "max_border: 0.4}\ntrain:\n  precision: fp32\n")
    r = load_recipe(path, check_files=False)
    assert r.data.train[1].path == "data/utk" and r.data.train[1].weight == 0.2 and r.train.precision == "fp32"
    assert "max_border: 0.4" in r.to_yaml()
    assert load_recipe(path, ["data.train=data/only"], check_files=False).data.train == "data/only"
    with pytest.raises(Exception, match="train.precision"):
        load_recipe(path, ["train.precision=fp8"], check_files=False)
    path.write_text(NO_TEACHER + "data:\n  train:\n    - {path: data/lfw, wieght: 1}\n")
    with pytest.raises(Exception, match="did you mean"):
        load_recipe(path, check_files=False)


def test_a_key_added_later_keeps_older_runs_current(tmp_path):
    """Runs finished before `train.precision` existed hashed their recipe without it; at its neutral
    value (fp32: what they did) the hash is unchanged, so they are reused, not moved aside."""
    import hashlib
    import json

    recipe = load_recipe(write(tmp_path, "a.yaml", {"train": {"precision": "fp32"}, "loss": {"distill": {"type": "none"}}}))
    old = recipe.to_dict()
    for key in ("name", "output_dir"):
        old.pop(key)
    del old["train"]["precision"]
    del old["data"]["augment"], old["teacher"]["views"], old["teacher"]["online"]  # added later still
    del old["teacher"]["cache_dtype"], old["teacher"]["cache_workers"], old["teacher"]["runtime"]
    del old["loss"]["distill"]["rpsd"]["accept_few_anchors"]
    del old["student"]["mean"], old["student"]["std"], old["student"]["channel_order"]  # and these
    del old["student"]["leaky_anneal_from"], old["student"]["freeze"]
    del old["teachers"]  # a list of several teachers, added later too
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert recipe.hash() == old_hash
    bf16 = load_recipe(write(tmp_path, "b.yaml", {"train": {"precision": "bf16"}, "loss": {"distill": {"type": "none"}}}))
    assert bf16.hash() != old_hash


def test_precision_auto_is_the_default_and_hashes_as_what_it_resolves_to(tmp_path, monkeypatch):
    """Default `auto`: on a CPU without bf16 it hashes like fp32 (older runs stay current); with bf16 it
    hashes like bf16, so an fp32 run is not continued in bf16 on another machine."""
    import facedistill.bench.sysinfo as sysinfo

    spec = {"loss": {"distill": {"type": "none"}}}
    fp32 = load_recipe(write(tmp_path, "f.yaml", {**spec, "train": {"precision": "fp32"}})).hash()
    bf16 = load_recipe(write(tmp_path, "b.yaml", {**spec, "train": {"precision": "bf16"}})).hash()
    auto = load_recipe(write(tmp_path, "a.yaml", spec))
    assert auto.train.precision == "auto"
    monkeypatch.setattr(sysinfo, "cpu_bf16_support", lambda text=None: (False, "test"))
    assert auto.hash() == fp32
    monkeypatch.setattr(sysinfo, "cpu_bf16_support", lambda text=None: (True, "test"))
    assert auto.hash() == bf16


def test_augmentation_keys_leave_existing_hashes_alone(tmp_path):
    """`data.augment`, `teacher.views` and `teacher.online` came later: off, they leave the hash as it was."""
    import hashlib
    import json

    recipe = load_recipe(write(tmp_path, "a.yaml", {"train": {"precision": "fp32"}, "loss": {"distill": {"type": "none"}}}))
    old = recipe.to_dict()
    for key in ("name", "output_dir"):
        old.pop(key)
    del old["train"]["precision"], old["data"]["augment"], old["teacher"]["views"], old["teacher"]["online"]
    del old["teacher"]["cache_dtype"], old["teacher"]["cache_workers"], old["teacher"]["runtime"]
    del old["loss"]["distill"]["rpsd"]["accept_few_anchors"]
    del old["student"]["mean"], old["student"]["std"], old["student"]["channel_order"]
    del old["student"]["leaky_anneal_from"], old["student"]["freeze"], old["teachers"]  # added later still
    old_hash = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    assert recipe.hash() == old_hash
    on = load_recipe(write(tmp_path, "b.yaml", {"data": {"augment": {"enabled": True}},
                                                "loss": {"distill": {"type": "none"}}}))
    tweaked = load_recipe(write(tmp_path, "c.yaml", {"data": {"augment": {"enabled": True, "rotate": 3.0}},
                                                     "loss": {"distill": {"type": "none"}}}))
    assert len({old_hash, on.hash(), tweaked.hash()}) == 3
    shipped = load_recipe(RECIPES / "sface_lfw" / "iled_aug.yaml", check_files=False)
    assert shipped.data.augment.enabled and shipped.teacher.views == 4
    assert shipped.hash() != load_recipe(RECIPES / "sface_lfw" / "iled.yaml", check_files=False).hash()


TEACHER = "teacher: {type: onnx, onnx: t.onnx}\n"


@pytest.mark.parametrize("text, key", [
    ("data: {augment: {enabled: true, rotat: 3}}", "data.augment.rotat"),            # unknown key, close match
    ("data: {augment: {enabled: true, jpeg: 1.5}}", "data.augment.jpeg"),              # out of range
    ("data: {augment: {enabled: true, border: wrap}}", "data.augment.border"),
    ("data: {augment: {enabled: yes-please}}", "data.augment.enabled"),                # wrong type
    ("data: {augment: {enabled: true}}", "teacher.views"),                              # cached teacher, no views
    ("teacher: {type: onnx, onnx: t.onnx, views: 4}", "teacher.views"),                # views without augment
    ("data: {augment: {enabled: true}}\nteacher: {type: onnx, onnx: t.onnx, views: 4, online: true}",
     "teacher.online"),
    ("teacher: {type: onnx, onnx: t.onnx, views: 0}", "teacher.views"),
])
def test_bad_augmentation_settings_name_the_key(tmp_path, text, key):
    path = write(tmp_path, "r.yaml", (TEACHER if not text.lstrip().startswith("teacher") else "") + text + "\n"
                 "loss: {distill: {type: l2}}\n")
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(path, check_files=False)


def test_augmentation_settings_that_work(tmp_path):
    for text in ("data: {augment: {enabled: true}}\nteacher: {type: onnx, onnx: t.onnx, views: 4}",
                 "data: {augment: {enabled: true}}\nteacher: {type: onnx, onnx: t.onnx, online: true}",
                 "data: {augment: {enabled: true}}\nteacher: {type: onnx, onnx: t.onnx, cache: false}"):
        r = load_recipe(write(tmp_path, "ok.yaml", text + "\nloss: {distill: {type: l2}}\n"), check_files=False)
        assert r.data.augment.enabled
    r = load_recipe(write(tmp_path, "set.yaml", "loss: {distill: {type: none}}\n"),
                    ["data.augment.enabled=true", "data.augment.rotate=3"], check_files=False)
    assert r.data.augment.rotate == 3.0


def test_teacher_per_channel_mean_std(tmp_path):
    """ImageNet-normalised teachers (foamliu's MobileFaceNet) give three values per key."""
    from facedistill.data.preprocessing import Preprocessing

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    path = write(tmp_path, "r.yaml", {"name": "x", "loss": {"distill": {"type": "none"}}, "teacher": {"mean": mean, "std": std}})
    t = load_recipe(path, check_files=False).teacher
    assert t.mean == mean and t.std == std
    pre = Preprocessing(t.mean, t.std, t.channel_order, t.input_size)
    x = pre.apply(np.full((1, 112, 112, 3), 255, dtype=np.uint8))
    assert np.allclose(x[0, :, 0, 0], [(255 - m) / s for m, s in zip(mean, std)])
    scalar = load_recipe(write(tmp_path, "s.yaml", {"name": "x", "loss": {"distill": {"type": "none"}}, "teacher": {"mean": 0, "std": 1}}),
                         check_files=False).teacher
    assert scalar.mean == 0.0 and isinstance(scalar.mean, float)


@pytest.mark.parametrize("teacher, match", [
    ({"mean": [1, 2]}, r"teacher\.mean.*three.*got 2"),
    ({"std": [1, 0, 1]}, r"teacher\.std.*not be 0"),
    ({"std": 0}, r"teacher\.std.*not be 0"),
    ({"mean": "imagenet"}, r"teacher\.mean"),
])
def test_teacher_mean_std_errors(tmp_path, teacher, match):
    path = write(tmp_path, "r.yaml", {"name": "x", "loss": {"distill": {"type": "none"}}, "teacher": teacher})
    with pytest.raises(RecipeError, match=match):
        load_recipe(path, check_files=False)


def test_cache_keys_checked_and_only_dtype_changes_the_hash(tmp_path):
    base = {"loss": {"distill": {"type": "none"}}}
    plain = load_recipe(write(tmp_path, "a.yaml", base))
    workers = load_recipe(write(tmp_path, "b.yaml", {**base, "teacher": {"cache_workers": 4}}))
    fp16 = load_recipe(write(tmp_path, "c.yaml", {**base, "teacher": {"cache_dtype": "float16"}}))
    assert workers.hash() == plain.hash() != fp16.hash()
    with pytest.raises(Exception, match="teacher.cache_dtype"):
        load_recipe(write(tmp_path, "d.yaml", {**base, "teacher": {"cache_dtype": "int8"}}), check_files=False)
    with pytest.raises(Exception, match="teacher.cache_workers"):
        load_recipe(write(tmp_path, "e.yaml", {**base, "teacher": {"cache_workers": 0}}), check_files=False)


def test_leaky_anneal_key_checks_and_hash(tmp_path):
    """`student.leaky_anneal_from` anneals ReLU/ReLU6 students only; unset it leaves the hash alone."""
    base = {"loss": {"distill": {"type": "none"}}, "student": {"arch": "mobilefacenet_s_relu6"}}
    plain = load_recipe(write(tmp_path, "a.yaml", base))
    off = load_recipe(write(tmp_path, "b.yaml", {**base, "student": {**base["student"], "leaky_anneal_from": None}}))
    on = load_recipe(write(tmp_path, "c.yaml", {**base, "student": {**base["student"], "leaky_anneal_from": 0.5}}))
    assert plain.student.leaky_anneal_from is None and on.student.leaky_anneal_from == 0.5
    assert plain.hash() == off.hash() != on.hash()
    with pytest.raises(RecipeError, match=r"student\.leaky_anneal_from.*mobilefacenet_s_leaky.*relu6"):
        load_recipe(write(tmp_path, "d.yaml", {**base, "student": {"arch": "mobilefacenet_s_leaky",
                                                                   "leaky_anneal_from": 0.5}}))
    for bad in (1.0, -0.1):
        with pytest.raises(RecipeError, match=r"student\.leaky_anneal_from.*\[0, 1\)"):
            load_recipe(write(tmp_path, "e.yaml", {**base, "student": {**base["student"], "leaky_anneal_from": bad}}))


# ----------------------------------------------------------------------------------------------
# several teachers (`teachers:`)
# ----------------------------------------------------------------------------------------------
def two_onnx(tmp_path: Path, **first) -> list[dict]:
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / name).write_bytes(b"")
    return [{"type": "onnx", "onnx": str(tmp_path / "a.onnx"), "mean": 0.0, "std": 1.0, **first},
            {"type": "onnx", "onnx": str(tmp_path / "b.onnx"), "channel_order": "BGR", "weight": 0.5}]


def test_teachers_list_parses_with_weights_and_shared_settings_from_the_first(tmp_path):
    data = {"data": {"augment": {"enabled": True}}, "loss": {"distill": {"type": "l2"}},
            "teachers": two_onnx(tmp_path, views=4, cache_dtype="float16")}
    r = load_recipe(write(tmp_path, "r.yaml", data))
    assert r.teacher is None and [t.weight for t in r.teachers] == [1.0, 0.5]
    assert [t.channel_order for t in r.teacher_sections] == ["RGB", "BGR"]
    assert [(t.views, t.cache_dtype) for t in r.teachers] == [(4, "float16"), (4, "float16")]  # taken from [0]
    assert r.teacher_settings is r.teachers[0] and r.teacher_key == "teachers[0]"
    again = load_recipe(write(tmp_path, "again.yaml", r.to_yaml()))  # the saved run recipe reloads
    assert again.hash() == r.hash() and again.teachers == r.teachers
    other = dict(data, teachers=[data["teachers"][0], dict(data["teachers"][1], weight=2.0)])
    assert load_recipe(write(tmp_path, "w.yaml", other)).hash() != r.hash()
    swapped = dict(data, teachers=two_onnx(tmp_path, views=4, cache_dtype="float16", cache_workers=3))
    assert load_recipe(write(tmp_path, "cw.yaml", swapped)).hash() == r.hash()  # how the cache is built only


@pytest.mark.parametrize("change, match", [
    ({"teacher": {"type": "onnx", "onnx": "x.onnx"}}, r"`teacher` and `teachers` are both given.*teacher: null"),
    ({"teachers.1.views": 2}, r"`teachers\[1\]\.views` is 2 but `teachers\[0\]\.views` is 1.*shared.*teachers\[0\] only"),
    ({"teachers.1.online": True}, r"`teachers\[1\]\.online`"),
    ({"teachers.1.weight": 0}, r"`teachers\[1\]\.weight` must be > 0"),
    ({"teachers.1.weight": -1}, r"`teachers\[1\]\.weight` must be > 0"),
    ({"teachers.1.type": "none"}, r"`teachers\[1\]\.type` is 'none', expected one of torch, onnx"),
    ({"teachers.1.onnx": "models/x.onnx"}, r"`teachers\[1\]\.onnx` models/x\.onnx does not exist"),
    ({"teachers.0.mean": [1, 2]}, r"`teachers\[0\]\.mean` must be one number or three"),
    ({"teachers.1.std": 0}, r"`teachers\[1\]\.std` must not be 0"),
    ({"teachers.1.colour": "RGB"}, r"unknown key `teachers\[1\]\.colour`"),
    ({"teachers.0.views": 0}, r"`teachers\[0\]\.views` must be >= 1"),
    ({"teachers.0.views": 3}, r"`teachers\[0\]\.views` is 3 but `data\.augment\.enabled` is false"),
    ({"loss.projector": "per_teachers"}, r"did you mean 'per_teacher'"),
])
def test_teachers_errors_name_the_key_with_its_index(tmp_path, change, match):
    data = {"loss": {"distill": {"type": "l2"}}, "teachers": two_onnx(tmp_path)}
    for key, value in change.items():
        if key.startswith("teachers."):
            _, i, name = key.split(".")
            data["teachers"][int(i)][name] = value
        elif key == "loss.projector":
            data["loss"]["projector"] = value
        else:
            data[key] = value
    with pytest.raises(RecipeError, match=match):
        load_recipe(write(tmp_path, "r.yaml", data))


def test_per_teacher_projector_needs_a_teachers_list(tmp_path):
    data = {"loss": {"projector": "per_teacher", "distill": {"type": "l2"}}, "teacher": {"type": "onnx", "onnx": "t.onnx"}}
    with pytest.raises(RecipeError, match=r"per_teacher.*`teachers` list"):
        load_recipe(write(tmp_path, "r.yaml", data), check_files=False)


def test_an_extending_recipe_replaces_an_inherited_teacher_with_teacher_null(tmp_path):
    write(tmp_path, "base.yaml", {"teacher": {"type": "onnx", "onnx": "sface.onnx"}, "loss": {"distill": {"type": "l2"}}})
    teachers = [{"type": "onnx", "onnx": "a.onnx"}, {"type": "onnx", "onnx": "b.onnx"}]
    with pytest.raises(RecipeError, match="may come from a recipe this one extends"):
        load_recipe(write(tmp_path, "both.yaml", {"extends": "base.yaml", "teachers": teachers}), check_files=False)
    r = load_recipe(write(tmp_path, "child.yaml", {"extends": "base.yaml", "teacher": None, "teachers": teachers}),
                    check_files=False)
    assert r.teacher is None and [t.onnx for t in r.teacher_sections] == ["a.onnx", "b.onnx"]
    alone = load_recipe(write(tmp_path, "alone.yaml", {"teacher": None, "loss": {"distill": {"type": "none"}}}))
    assert alone.teacher_sections == [] and alone.teacher.type == "none"


def test_set_reaches_into_a_teachers_list_by_index(tmp_path):
    """`--set teachers.1.weight=2` sets one entry's key (shared keys on teachers[0]); an index outside
    the list is refused naming its length; `--set 'teachers=[...]'` replaces the list."""
    path = write(tmp_path, "r.yaml", {"loss": {"distill": {"type": "l2"}}, "teachers": two_onnx(tmp_path)})
    r = load_recipe(path, ["teachers.1.weight=2", "teachers.0.batch_size=16"])
    assert [t.weight for t in r.teachers] == [1.0, 2.0] and [t.batch_size for t in r.teachers] == [16, 16]
    with pytest.raises(RecipeError, match=r"`teachers` is a list of 2; give an index 0..1"):
        load_recipe(path, ["teachers.2.weight=2"])
    with pytest.raises(RecipeError, match=r"`loss.distill.type` is not a section"):
        load_recipe(path, ["loss.distill.type.x=1"])
    r = load_recipe(path, ["teachers=[{type: onnx, onnx: x.onnx}, {type: onnx, onnx: y.onnx, weight: 2}]"],
                    check_files=False)
    assert [t.weight for t in r.teachers] == [1.0, 2.0]


# Hashes of shipped recipes (train.precision pinned to fp32: `auto` hashes as what this CPU resolves
# to) as computed before the `teachers` list existed: the runs they name stay current.
SHIPPED_HASHES = {
    "sface_to_mbf_lfw.yaml": "dd7ab4dc8248d667",
    "sface_lfw/unified_celeba.yaml": "753177e8d52a9934",
    "sface_lfw/iled_aug.yaml": "dd0d71a1703ff7ae",
    "quickstart/unified.yaml": "576cd90518d74f23",
}


@pytest.mark.parametrize("name", sorted(SHIPPED_HASHES))
def test_shipped_single_teacher_recipes_keep_their_hash(name):
    r = load_recipe(RECIPES / name, ["train.precision=fp32"], check_files=False)
    assert r.teachers == [] and r.hash() == SHIPPED_HASHES[name]


def test_exponent_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; in a float key (file or --set) it is the number meant."""
    path = tmp_path / "r.yaml"
    path.write_text("loss:\n  distill: {type: none}\noptim:\n  lr: 1e-4\n")
    assert load_recipe(path, check_files=False).optim.lr == 1e-4
    assert load_recipe(path, ["optim.lr=2E-5"], check_files=False).optim.lr == 2e-5
    with pytest.raises(RecipeError, match="optim.lr"):
        load_recipe(path, ["optim.lr=1e-4x"], check_files=False)
    with pytest.raises(RecipeError, match="train.max_steps"):  # an int key keeps refusing a string
        load_recipe(path, ["train.max_steps=1e3"], check_files=False)
