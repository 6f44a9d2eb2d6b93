"""The built-in image networks: ResNet-18 with torchvision's layout, names and cost; the cnn's
size independent of the input's, and artifacts of the older cnn still building and loading."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline import kinds
from pipeline.core.config import load_config
from pipeline.model import objectives
from pipeline.model.networks import build_model, load_initial_weights
from pipeline.model.spec import ModelSpec


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _resnet18(channels: int = 3, classes: int = 1000) -> torch.nn.Module:
    return build_model(ModelSpec(arch="resnet18", input_shape=[channels, 224, 224], num_classes=classes))


# torchvision.models.resnet18().state_dict(): its first and last entries, the first downsample
# and the number of entries. 62 parameter tensors (conv1, bn1, 8 blocks of conv1/bn1/conv2/bn2
# = 6 each, 3 downsamples of conv + bn = 3 each, fc weight and bias: 3 + 48 + 9 + 2) and the
# 20 batch norms' 3 buffers each (running_mean, running_var, num_batches_tracked): 62 + 60 = 122.
TORCHVISION_FIRST = [
    ("conv1.weight", (64, 3, 7, 7)),
    ("bn1.weight", (64,)), ("bn1.bias", (64,)), ("bn1.running_mean", (64,)), ("bn1.running_var", (64,)),
    ("bn1.num_batches_tracked", ()),
    ("layer1.0.conv1.weight", (64, 64, 3, 3)),
    ("layer1.0.bn1.weight", (64,)), ("layer1.0.bn1.bias", (64,)), ("layer1.0.bn1.running_mean", (64,)),
    ("layer1.0.bn1.running_var", (64,)), ("layer1.0.bn1.num_batches_tracked", ()),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)),
]
TORCHVISION_DOWNSAMPLE = [
    ("layer2.0.conv2.weight", (128, 128, 3, 3)),
    ("layer2.0.bn2.weight", (128,)), ("layer2.0.bn2.bias", (128,)), ("layer2.0.bn2.running_mean", (128,)),
    ("layer2.0.bn2.running_var", (128,)), ("layer2.0.bn2.num_batches_tracked", ()),
    ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
    ("layer2.0.downsample.1.weight", (128,)), ("layer2.0.downsample.1.bias", (128,)),
    ("layer2.0.downsample.1.running_mean", (128,)), ("layer2.0.downsample.1.running_var", (128,)),
    ("layer2.0.downsample.1.num_batches_tracked", ()),
    ("layer2.1.conv1.weight", (128, 128, 3, 3)),
]
TORCHVISION_LAST = [
    ("layer4.1.conv2.weight", (512, 512, 3, 3)),
    ("layer4.1.bn2.weight", (512,)), ("layer4.1.bn2.bias", (512,)), ("layer4.1.bn2.running_mean", (512,)),
    ("layer4.1.bn2.running_var", (512,)), ("layer4.1.bn2.num_batches_tracked", ()),
    ("fc.weight", (1000, 512)), ("fc.bias", (1000,)),
]
TORCHVISION_ENTRIES = 122
TORCHVISION_PARAMETERS = 11_689_512


def test_resnet18_has_torchvisions_parameters_names_and_shapes():
    model = _resnet18()
    assert _params(model) == TORCHVISION_PARAMETERS
    state = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert len(state) == TORCHVISION_ENTRIES
    assert state[:len(TORCHVISION_FIRST)] == TORCHVISION_FIRST
    assert state[-len(TORCHVISION_LAST):] == TORCHVISION_LAST
    start = [k for k, _ in state].index(TORCHVISION_DOWNSAMPLE[0][0])
    assert state[start:start + len(TORCHVISION_DOWNSAMPLE)] == TORCHVISION_DOWNSAMPLE
    assert sorted(k for k, _ in state if ".downsample.0." in k) == [
        f"layer{i}.0.downsample.0.weight" for i in (2, 3, 4)]  # only where the shape changes


def test_resnet18_loads_a_saved_state_dict_strictly_and_gives_the_same_outputs(tmp_path):
    """``train.init_weights`` with a state dict saved elsewhere (keys in torchvision's order)."""
    src = _resnet18(classes=10).eval()
    torch.save(dict(src.state_dict()), tmp_path / "resnet18.pt")
    dst = _resnet18(classes=10).eval()
    load_initial_weights(dst, str(tmp_path / "resnet18.pt"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))
    with pytest.raises(ValueError, match="does not fit"):
        load_initial_weights(_resnet18(classes=7), str(tmp_path / "resnet18.pt"))


def test_resnet18_equals_torchvisions_where_torchvision_imports():
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        pytest.skip(f"torchvision does not import with this torch build: {type(e).__name__}")
    theirs = torchvision.models.resnet18(weights=None).eval()
    ours = _resnet18().eval()
    ours.load_state_dict(theirs.state_dict())  # strict
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_resnet18_takes_any_input_size_and_channel_count():
    model = _resnet18(classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 10)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
        gray = _resnet18(channels=1, classes=10).eval()
        assert gray.conv1.weight.shape == (64, 1, 7, 7) and gray(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_resnet18_costs_1_8_gmac_at_224_px():
    model = _resnet18().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    flops = counter.get_total_flops()  # 2 FLOPs per multiply-accumulate: convolutions and the fc layer
    assert flops == pytest.approx(3.64e9, rel=0.02), flops


def test_strided_cnn_costs_under_0_2_gflop_at_224_px_and_takes_any_size():
    model = build_model(ModelSpec(arch="strided_cnn", input_shape=[3, 224, 224], num_classes=10)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 10)
    assert counter.get_total_flops() == pytest.approx(0.0975e9, rel=0.02), counter.get_total_flops()
    assert _params(model) == 98_970
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 10)


def test_cnn_size_does_not_depend_on_the_input_size():
    sizes = {hw: _params(build_model(ModelSpec(arch="cnn", input_shape=[3, hw, hw], num_classes=10, head="pool")))
             for hw in (8, 32, 224)}
    assert sizes[224] == sizes[32] == sizes[8] < 1_000_000, sizes
    model = build_model(ModelSpec(arch="cnn", input_shape=[3, 224, 224], num_classes=10, head="pool")).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 10)
        assert model(torch.zeros(2, 3, 5, 7)).shape == (2, 10)


def test_new_specs_pick_the_pooled_cnn_and_write_it_in_model_json():
    cfg = load_config("conf/digits.yaml", [])
    objective = objectives.for_task("classification", {"label_names": [str(i) for i in range(10)]})
    spec = objectives.model_spec(cfg.train, kinds.get("images"), [1, 8, 8], objective)
    assert spec.head == "pool" and spec.as_dict()["head"] == "pool"
    assert ModelSpec.from_dict(spec.as_dict()) == spec
    resnet = objectives.model_spec(load_config("conf/digits.yaml", ["train.arch=resnet18"]).train,
                                   kinds.get("images"), [1, 8, 8], objective)
    assert resnet.arch == "resnet18" and "head" not in resnet.as_dict()
    with pytest.raises(objectives.TaskSetupError, match="resnet18"):
        objectives.model_spec(load_config("conf/digits.yaml", ["train.arch=resnet18"]).train,
                              kinds.get("tabular"), [4], objective)


# model.json's model spec and model.pt's entries as the cnn wrote them before the pooled head, for
# 28x28 grayscale input: the dense layer takes the 64 x 14 x 14 flattened feature maps.
OLD_SPEC = {"arch": "cnn", "input_shape": [1, 28, 28], "num_classes": 10, "task": "classification"}
OLD_STATE = [("features.0.weight", (32, 1, 3, 3)), ("features.0.bias", (32,)),
             ("features.2.weight", (64, 32, 3, 3)), ("features.2.bias", (64,)),
             ("head.0.weight", (128, 64 * 14 * 14)), ("head.0.bias", (128,)),
             ("head.3.weight", (10, 128)), ("head.3.bias", (10,))]


def test_an_old_cnn_spec_builds_the_old_layout_and_loads_its_weights():
    spec = ModelSpec.from_dict(OLD_SPEC)
    assert spec.head is None and spec.as_dict() == OLD_SPEC  # written back as it was read
    model = build_model(spec)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == OLD_STATE
    old = {k: torch.randn(shape) for k, shape in OLD_STATE}
    model.load_state_dict(old)  # strict
    assert model.eval()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(RuntimeError, match="size mismatch"):
        build_model(ModelSpec.from_dict({**OLD_SPEC, "head": "pool"})).load_state_dict(old)
    with pytest.raises(ValueError, match="cnn head"):
        build_model(ModelSpec.from_dict({**OLD_SPEC, "head": "global"}))


def test_for_8x8_digits_the_pooled_cnn_is_the_classic_network():
    """The 4x4 pool is the identity on the digits' 4x4 feature maps: same weights, same outputs."""
    old = build_model(ModelSpec(arch="cnn", input_shape=[1, 8, 8], num_classes=10)).eval()
    new = build_model(ModelSpec(arch="cnn", input_shape=[1, 8, 8], num_classes=10, head="pool")).eval()
    new.load_state_dict(old.state_dict())
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(old(x), new(x))
