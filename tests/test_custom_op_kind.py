"""A unit TraceNAS does not know (ShuffleNet's channel shuffle) added through the public op-kind registry:
its own key, tracing rule and profiling builder, then traced, profiled and given features."""

import pytest
import torch
from torch import nn

from nas.cli.main import main
from nas.latency.features import unit_features
from nas.latency.op_keys import UNIT_MODULES, OpKey, OpKeyError, trunk_op_keys
from nas.latency.op_kinds import OP_KINDS, OpKind, register_op_kind, tracing_rules
from nas.latency.table import LatencyTable
from search_spaces.tracing.box import Box
from search_spaces.tracing.rules import DEFAULT_RULES
from search_spaces.tracing.tracer import ReceptiveFieldTracer, TracingError


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBody(nn.Module):
    """conv-BN-ReLU, shuffle, depthwise conv-BN, grouped 1x1 conv-ReLU (a ShuffleNet unit's main branch)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), ChannelShuffle(2),
                                  nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8),
                                  nn.Conv2d(8, 16, 1, groups=2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.body(x),)


def _build(key: OpKey) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return ChannelShuffle(int(key.attr("groups"))), (torch.randn(1, int(key.attr("c")), *key.out_hw),)


@pytest.fixture
def channel_shuffle():
    kind = register_op_kind(OpKind("channel_shuffle", ("c", "groups"), _build, module_type=ChannelShuffle,
                                   key_attrs=lambda module, channels: {"c": channels, "groups": module.groups}))
    yield kind
    del OP_KINDS[kind.name], UNIT_MODULES[ChannelShuffle]


def _keys(rules) -> list[OpKey]:
    tracer = ReceptiveFieldTracer(ShuffleBody().eval(), rules)
    return trunk_op_keys(tracer, tracer.plan((32, 32), [Box.full(16, 16)], dense=True), 3)


def test_an_unregistered_shuffle_is_refused_and_never_fused_into_a_conv():
    with pytest.raises(TracingError):  # its forward reads x.size() and reshapes
        ReceptiveFieldTracer(ShuffleBody())
    with pytest.raises(OpKeyError, match="ChannelShuffle .*register_op_kind"):  # declared per pixel, no kind
        _keys(DEFAULT_RULES.with_pointwise(ChannelShuffle))


def test_a_registered_op_kind_is_traced_as_its_own_unit(channel_shuffle):
    assert [str(k) for k in _keys(tracing_rules())] == [
        "conv[act=relu,cin=3,cout=8,d=1,g=1,k=3,s=2]@16x16",  # the ReLU stays with its conv
        "channel_shuffle[c=8,groups=2]@16x16",
        "conv[act=none,cin=8,cout=8,d=1,g=dw,k=3,s=1]@16x16",
        "conv[act=relu,cin=8,cout=16,d=1,g=2,k=1,s=1]@16x16",
    ]
    flops, dw_flops, memory_mb, units = unit_features(OpKey.parse("channel_shuffle[c=8,groups=2]@16x16"))
    assert (flops, dw_flops, units) == (0.0, 0.0, 1.0) and memory_mb == pytest.approx(2 * 8 * 16 * 16 * 4 / 1e6)
    with pytest.raises(OpKeyError, match="module_type and key_attrs"):
        register_op_kind(OpKind("half", ("c",), _build, module_type=ChannelShuffle))


def test_nas_profile_keys_times_a_custom_unit_and_remeasures(tmp_path, channel_shuffle, capsys):
    keys = _keys(tracing_rules())
    key_file = tmp_path / "shufflenet.keys"
    key_file.write_text("# units of a ShuffleNet body\n" + "\n".join(map(str, keys)) + "\n")
    out = tmp_path / "host.json"
    command = ["profile", "--keys", str(key_file), "--device", "host", "--backend", "onnxruntime",
               "--out", str(out), "--max-seconds", "0.05"]
    assert main(command) == 0
    table = LatencyTable.load(out)
    assert sorted(table.entries) == sorted(map(str, keys)) and table.space is None
    shuffle = table.entries["channel_shuffle[c=8,groups=2]@16x16"]
    assert shuffle.mean > 0 and shuffle.count >= 10
    assert main(command + ["--remeasure"]) == 0
    assert LatencyTable.load(out).entries["channel_shuffle[c=8,groups=2]@16x16"] != shuffle

    capsys.readouterr()
    for text, message in (("conv[k=3]@8x8", "does not carry"), ("shuffle[c=8]@4x4", "no op kind 'shuffle'"),
                          ("nonsense", "malformed op key")):
        key_file.write_text(f"{keys[0]}\n{text}\n")
        assert main(command[:-4] + ["--out", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr().err
        assert "shufflenet.keys:2: " in err and message in err and err.count("\n") == 1
        assert not (tmp_path / "bad.json").exists()
