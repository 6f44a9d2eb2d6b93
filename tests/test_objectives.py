"""Task objectives and their metrics, checked against scikit-learn on the same predictions;
the recurrent, factory and torchvision models; image augmentation."""
import dataclasses
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from pipeline import kinds
from pipeline.training import augment
from pipeline.model import metrics, objectives
from pipeline.core.config import ConfigError, load_config
from pipeline.model.networks import build_model, load_initial_weights
from pipeline.model.spec import ModelSpec


def _logits(n, k, seed, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    out = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    if ties:
        out = np.round(out, 1)  # many equal scores: the tie rules matter
    return out.astype(np.float32), y


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_binary_classification_metrics_equal_scikit_learn(seed, ties):
    out, y = _logits(301, 2, seed, ties)
    obj = objectives.for_task("classification", {"label_names": ["benign", "malignant"]})
    got = obj.metrics(out, y)
    pred = out.argmax(1)
    prob = metrics.softmax(out)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    p, r, _, _ = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    assert [got["precision_benign"], got["precision_malignant"]] == pytest.approx(p)
    assert [got["recall_benign"], got["recall_malignant"]] == pytest.approx(r)
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob[:, 1]), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob[:, 1]), abs=1e-12)
    assert got["loss"] == pytest.approx(skm.log_loss(y, prob), rel=1e-6)
    # torch's loss on the same logits is the metric's loss
    t = obj.loss(torch.from_numpy(out), torch.from_numpy(y))
    assert float(t) == pytest.approx(got["loss"], rel=1e-5)


def test_multiclass_metrics_with_an_absent_class_equal_scikit_learn():
    out, y = _logits(200, 4, 3)
    y[y == 3] = 0  # class 3 never occurs: its precision/recall are 0 as in scikit-learn
    obj = objectives.for_task("classification", {"label_names": list("abcd")})
    got = obj.metrics(out, y)
    pred = out.argmax(1)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", labels=range(4), zero_division=0))
    assert "roc_auc" not in got
    cm = obj.report(out, y)["confusion_matrix"]
    assert cm == skm.confusion_matrix(y, pred, labels=range(4)).tolist()


def test_class_weights_equal_scikit_learn_and_weight_the_loss():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 90 + [1] * 10)
    w = metrics.balanced_class_weights(np.bincount(y))
    assert w == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1]), y=y))
    out, _ = _logits(100, 2, 4)
    obj = objectives.for_task("classification", {"label_names": ["a", "b"], "class_weights": w.tolist()})
    ref = torch.nn.functional.cross_entropy(torch.from_numpy(out), torch.from_numpy(y), weight=torch.tensor(w).float())
    assert float(obj.loss(torch.from_numpy(out), torch.from_numpy(y))) == pytest.approx(float(ref), rel=1e-6)
    assert obj.metrics(out, y)["loss"] == pytest.approx(float(ref), rel=1e-5)


@pytest.mark.parametrize("outputs", [1, 3])
def test_regression_metrics_in_original_units_equal_scikit_learn(outputs):
    rng = np.random.default_rng(5)
    y = rng.normal(150, 70, (120, outputs)).astype(np.float32)
    obj = objectives.for_task("regression", {"label_stats": {"mean": 150.0, "std": 70.0}, "outputs": outputs})
    out = ((y + rng.normal(0, 30, y.shape)) - 150.0) / 70.0  # the network predicts standardised values
    got = obj.metrics(out.astype(np.float32), y.squeeze(1) if outputs == 1 else y)
    pred = obj.predictions(out.astype(np.float32))["prediction"]
    assert pred.shape == ((120,) if outputs == 1 else (120, outputs))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y.ravel(), pred.ravel())), rel=1e-6)
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y.ravel(), pred.ravel()), rel=1e-6)
    assert got["r2"] == pytest.approx(skm.r2_score(y.ravel(), pred.ravel()), rel=1e-6)
    assert got["loss"] == pytest.approx(np.mean((out - (y - 150) / 70) ** 2), rel=1e-4)
    assert obj.higher_is_better("val_r2") and not obj.higher_is_better("val_rmse")


def test_regression_losses_and_monitor_choice():
    out, y = torch.tensor([[0.0], [2.0]]), torch.tensor([10.0, 10.0])
    info = {"label_stats": {"mean": 10.0, "std": 2.0}}
    assert float(objectives.for_task("regression", {**info, "loss": "mse"}).loss(out, y)) == pytest.approx(2.0)
    assert float(objectives.for_task("regression", {**info, "loss": "mae"}).loss(out, y)) == pytest.approx(1.0)
    assert float(objectives.for_task("regression", {**info, "loss": "huber"}).loss(out, y)) == pytest.approx(0.75)
    reg = objectives.for_task("regression", info)
    assert reg.default_monitor == "val_rmse" and set(reg.metric_names) == {"loss", "rmse", "mae", "r2"}
    assert not objectives.higher_is_better("val_rmse") and objectives.higher_is_better("val_r2")
    assert objectives.higher_is_better("val_macro_f1") and not objectives.higher_is_better("val_loss")
    # train-time sums give the RMSE in label units
    sums = reg.batch_sums(out, y).numpy()
    assert reg.train_metrics(sums, 2)["rmse"] == pytest.approx(np.sqrt((0 + 4 ** 2) / 2))  # outputs 10 and 14
    with pytest.raises(ValueError, match="unknown train.task"):
        objectives.for_task("ranking", {})


def test_stacked_lstm_and_gru_shapes():
    m = build_model(ModelSpec(**{"arch": "lstm", "input_shape": [24, 3], "num_classes": 2}))
    assert [(layer.input_size, layer.hidden_size) for layer in m.layers] == [(3, 64), (64, 64), (64, 64)]
    assert isinstance(m.layers[0], torch.nn.LSTM) and m.head.out_features == 2
    assert m(torch.zeros(5, 24, 3)).shape == (5, 2)
    g = build_model(ModelSpec(**{"arch": "gru", "input_shape": [10, 1], "num_classes": 1, "hidden": [16, 8]}))
    assert isinstance(g.layers[0], torch.nn.GRU) and g(torch.zeros(2, 10, 1)).shape == (2, 1)


def test_model_from_a_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n__version__ = '1.2'\n"
        "def tiny(spec):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(spec['input_shape'][0], spec['num_classes']))\n"
        "def not_a_model(spec):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model(ModelSpec(**{"arch": "my_models:tiny", "input_shape": [7], "num_classes": 3}))
    assert m(torch.zeros(2, 7)).shape == (2, 3)
    # the factory gets model.json's plain dict, which round-trips
    spec = ModelSpec(arch="my_models:tiny", input_shape=[7], num_classes=3, task="classification")
    assert ModelSpec.from_dict(spec.as_dict()) == spec and isinstance(spec.as_dict(), dict)
    from pipeline.model.networks import factory_version

    v = factory_version("my_models:tiny")
    assert v["path"] == "my_models:tiny" and v["version"] == "1.2" and len(v["source_sha256"]) == 64
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        build_model(ModelSpec(**{"arch": "my_models:not_a_model", "input_shape": [7], "num_classes": 3}))
    with pytest.raises(ValueError, match="--py-files"):
        build_model(ModelSpec(**{"arch": "no_such_module:f", "input_shape": [7], "num_classes": 3}))
    sys.modules.pop("my_models", None)


def test_torchvision_model_sized_for_channels_and_classes():
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torchvision does not import with this torch build: {type(e).__name__}")
    m = build_model(ModelSpec(**{"arch": "torchvision:resnet18", "input_shape": [1, 8, 8], "num_classes": 10}))
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_init_weights_load_with_weights_only(tmp_path):
    spec = ModelSpec(arch="mlp", input_shape=[4], num_classes=2)
    src = build_model(spec)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = build_model(spec)
    load_initial_weights(dst, str(tmp_path / "w.pt"))
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    torch.save({"weights": src.state_dict(), "code": print}, tmp_path / "pickled.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_initial_weights(dst, str(tmp_path / "pickled.pt"))
    with pytest.raises(ValueError, match="does not fit"):
        load_initial_weights(build_model(dataclasses.replace(spec, num_classes=3)), str(tmp_path / "w.pt"))


def test_augmentation_is_seeded_keeps_uint8_and_changes_images():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 3, 12, 12), dtype=np.uint8))
    conf = {"crop_padding": 2, "hflip": True, "rotate_degrees": 10, "brightness": 0.2, "contrast": 0.2}
    a = augment.apply(x, conf, augment.generator(torch.device("cpu"), 42, 0, 3))
    b = augment.apply(x, conf, augment.generator(torch.device("cpu"), 42, 0, 3))
    c = augment.apply(x, conf, augment.generator(torch.device("cpu"), 42, 1, 3))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)


def test_flip_mirrors_about_half_the_images_left_right():
    n = 64
    # no image is its own mirror image: a flipped row cannot pass for an unflipped one
    x = torch.arange(1, n * 2 * 4 * 5 + 1, dtype=torch.int32).reshape(n, 2, 4, 5).remainder(251).to(torch.uint8)
    assert all(not torch.equal(x[i], x[i].flip(2)) for i in range(n))
    flipped = augment.horizontal_flip(x, augment.generator(torch.device("cpu"), 1))
    assert flipped.dtype == torch.uint8 and flipped.shape == x.shape
    mirrored = [i for i in range(n) if torch.equal(flipped[i], x[i].flip(2))]
    kept = [i for i in range(n) if torch.equal(flipped[i], x[i])]
    assert sorted(mirrored + kept) == list(range(n))  # each image is either mirrored (width axis) or kept
    for i in mirrored:
        np.testing.assert_array_equal(flipped[i].numpy(), np.flip(x[i].numpy(), axis=-1))
    assert 16 <= len(mirrored) <= 48, len(mirrored)  # p = 0.5, fixed seed: some of each, about half
    again = augment.horizontal_flip(x, augment.generator(torch.device("cpu"), 1))
    assert torch.equal(again, flipped)  # the seed decides


def test_crop_shifts_each_image_by_its_own_offset_with_zeros_filling_in():
    n, pad = 64, 2
    x = torch.arange(1, n * 1 * 6 * 6 + 1, dtype=torch.int32).reshape(n, 1, 6, 6).remainder(251).add(1).to(torch.uint8)
    assert (x > 0).all()  # zeros in a crop can only come from the padding
    cropped = augment.random_crop(x, pad, augment.generator(torch.device("cpu"), 2))
    assert cropped.shape == x.shape and cropped.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = []
    for i in range(n):  # each crop is exactly one 6x6 window of its padded image
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(cropped[i, 0], padded[i, 0, dy:dy + 6, dx:dx + 6])]
        assert len(hits) == 1, (i, hits)
        offsets.append(hits[0])
    shifted = [o for o in offsets if o != (pad, pad)]
    assert len(shifted) >= n // 2 and len(set(offsets)) >= 10, offsets  # 25 offsets drawn uniformly
    for i, (dy, dx) in enumerate(offsets):  # the pixels shifted in from outside are the padding's zeros
        zeros = int((cropped[i] == 0).sum())
        rows, cols = abs(dy - pad), abs(dx - pad)
        assert zeros == rows * 6 + cols * 6 - rows * cols, (i, dy, dx)
    with pytest.raises(ValueError, match="uint8"):
        augment.apply(x.float(), {"hflip": True}, augment.generator(torch.device("cpu"), 1))


def test_task_config_keys_are_validated():
    cfg = load_config("conf/digits.yaml", ["train.task=regression", "train.loss=huber", "train.monitor=val_r2",
                                          "train.arch=my.module:build", "train.augment.hflip=true"])
    assert cfg.train.augment.hflip and cfg.train.arch == "my.module:build"
    with pytest.raises(ConfigError, match="train.arch"):
        load_config("conf/digits.yaml", ["train.arch=transformer"])
    with pytest.raises(ConfigError, match="train.monitor"):
        load_config("conf/digits.yaml", ["train.monitor=accuracy"])
    # A kind checks its own settings (pipeline.kinds), before its job does any work.
    with pytest.raises(ConfigError, match="regression"):
        kinds.for_config(load_config("conf/digits.yaml", ["dataset.kind=sequence"]))
    with pytest.raises(ConfigError, match="window"):
        kinds.for_config(load_config("conf/sunspots.yaml", ["dataset.sequence.window=0"]))
    with pytest.raises(ConfigError, match="declared twice"):
        kinds.for_config(load_config("conf/wine.yaml", ["dataset.tabular.ignore=[alcohol]"]))
    with pytest.raises(ConfigError, match="only tabular"):
        kinds.for_config(load_config("conf/digits.yaml", ["score.passthrough=[a]"]))
    with pytest.raises(ConfigError, match="dataset.kind: 'audio' is not a kind"):
        kinds.for_config(load_config("conf/digits.yaml", ["dataset.kind=audio"]))
