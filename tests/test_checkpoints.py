import torch

from pipeline.training import checkpoints
from pipeline.core import lake


def test_keeps_the_newest_and_points_latest_at_the_last(tmp_path):
    d = f"file://{tmp_path}/ck"
    assert checkpoints.latest(d) is None
    for epoch in range(5):
        checkpoints.save(d, epoch, {"epoch": epoch, "w": torch.full((2,), float(epoch))}, keep=2)
    assert [n for n in lake.listdir(d) if n.endswith(".pt")] == ["epoch=0003.pt", "epoch=0004.pt"]
    state = checkpoints.load(checkpoints.latest(d))
    assert state["epoch"] == 4 and state["w"].tolist() == [4.0, 4.0]
    assert not [n for n in lake.listdir(d) if n.startswith(".tmp")]  # atomic writes leave nothing behind
