"""Weight-sharing supernet: one set of weights that runs every `ArchConfig` of a space.

The shared weights are those of the space's largest student. A subnet's weights are views of them:
the first channels of every tensor (elastic width and expand ratio, after `sort_channels` puts the
most important channels first), the first blocks of every stage (elastic depth), and for smaller
depthwise kernels the centre of the larger kernel passed through a learned kernel-transform matrix
(Once-for-All's elastic kernel). Because a subnet *is* the static `TraceNetStudent` for its config,
`forward(..., arch)` runs that module with the sliced weights (`torch.func.functional_call`) and
`extract(arch)` copies the same slices into a standalone module: both paths share one forward.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.func import functional_call

from search_spaces.common.errors import InvalidValueError
from search_spaces.modules.head import TapOutput
from search_spaces.space import DEFAULT_SPACE, ArchConfig, SpaceSpec, get_space
from search_spaces.students.student import TraceNetStudent
from search_spaces.tracing.box import Box

SKELETON_CACHE_SIZE = 64


def transform_key(name: str, src: int, dst: int) -> str:
    return f"{name.replace('.', '__')}__{src}to{dst}"


class TraceNetSupernet(nn.Module):
    """Runs any member of `space` with shared weights; pass the config explicitly to every call."""

    def __init__(self, space: str | SpaceSpec = DEFAULT_SPACE):
        super().__init__()
        self.spec = get_space(space)
        self.largest = TraceNetStudent(ArchConfig.largest(self.spec))
        kernels = self.spec.kernels
        self.kernel_transforms = nn.ParameterDict()
        for name, module in self.largest.named_modules():
            if _is_depthwise(module) and module.kernel_size[0] == kernels[-1]:
                for src, dst in zip(kernels[:0:-1], kernels[-2::-1], strict=True):
                    self.kernel_transforms[transform_key(f"{name}.weight", src, dst)] = nn.Parameter(
                        torch.eye(dst * dst))
        self._skeletons: OrderedDict[ArchConfig, TraceNetStudent] = OrderedDict()

    # ---------------------------------------------------------------- weights of one subnet
    def _skeleton(self, arch: ArchConfig) -> TraceNetStudent:
        """The static module for `arch` with meta (storage-free) tensors, cached by config."""
        if arch.space != self.spec.name:
            raise InvalidValueError(f"architecture of space '{arch.space}' given to a '{self.spec.name}' supernet")
        skeleton = self._skeletons.pop(arch, None)
        if skeleton is None:
            with torch.device("meta"):
                skeleton = TraceNetStudent(arch)
        self._skeletons[arch] = skeleton
        if len(self._skeletons) > SKELETON_CACHE_SIZE:
            self._skeletons.popitem(last=False)
        return skeleton

    def active_state(self, arch: ArchConfig) -> dict[str, torch.Tensor]:
        """Parameters and buffers of the subnet `arch`, as differentiable views of the shared weights."""
        skeleton = self._skeleton(arch)
        shared = dict(self.largest.named_parameters()) | dict(self.largest.named_buffers())
        state = {}
        for name, target in list(skeleton.named_parameters()) + list(skeleton.named_buffers()):
            source = shared[name]
            if source.dim() == 4 and source.shape[-1] > target.shape[-1]:
                source = self._transformed_kernel(name, source, target.shape[-1])
            state[name] = source[tuple(slice(0, n) for n in target.shape)]
        return state

    def _transformed_kernel(self, name: str, weight: torch.Tensor, size: int) -> torch.Tensor:
        """Centre-crop a depthwise kernel step by step (7 -> 5 -> 3), each through its transform matrix."""
        kernels = self.spec.kernels
        src = weight.shape[-1]
        for dst in reversed(kernels[: kernels.index(src)]):
            if dst < size:
                break
            start = (src - dst) // 2
            centre = weight[:, :, start:start + dst, start:start + dst].reshape(-1, dst * dst)
            matrix = self.kernel_transforms[transform_key(name, src, dst)]
            weight = (centre @ matrix.T).reshape(weight.shape[0], weight.shape[1], dst, dst)
            src = dst
        return weight

    # ---------------------------------------------------------------- running and extracting
    def forward(self, image: torch.Tensor, clicks: torch.Tensor, arch: ArchConfig,
                window: Box | None = None) -> TapOutput:
        skeleton = self._skeleton(arch).train(self.training)
        return functional_call(skeleton, self.active_state(arch), (image, clicks), {"window": window})

    @torch.no_grad()
    def extract(self, arch: ArchConfig) -> TraceNetStudent:
        """A standalone `TraceNetStudent` whose weights are copies of the shared ones for `arch`."""
        student = TraceNetStudent(arch)
        student.load_state_dict({k: v.detach().clone() for k, v in self.active_state(arch).items()}, strict=True)
        return student.train(self.training)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder every block's expanded (and squeeze-excitation) channels by importance, largest first.

        Once-for-All's importance ordering: the L1 norm of the weights that read a channel. The
        permutation leaves the largest network's function unchanged and makes narrower subnets keep
        the most important channels.
        """
        for block in self.largest.modules():
            if not hasattr(block, "conv_pwl"):
                continue
            if hasattr(block.se, "conv_expand"):
                se_order = block.se.conv_expand.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
                _permute(block.se.conv_reduce, se_order, dim=0)
                _permute(block.se.conv_expand, se_order, dim=1)
            order = block.conv_pwl.weight.abs().sum(dim=(0, 2, 3)).argsort(descending=True)
            _permute(block.conv_pw, order, dim=0)
            _permute(block.bn1, order, dim=0)
            _permute(block.conv_dw, order, dim=0)
            _permute(block.bn2, order, dim=0)
            if hasattr(block.se, "conv_expand"):
                _permute(block.se.conv_reduce, order, dim=1)
                _permute(block.se.conv_expand, order, dim=0)
            _permute(block.conv_pwl, order, dim=1)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _permute(module: nn.Module, order: torch.Tensor, dim: int) -> None:
    """Permute the channels of every tensor of `module` that has them along `dim` (weights, bias, BN stats)."""
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if tensor.dim() > dim and tensor.shape[dim] == order.numel():
            tensor.copy_(tensor.index_select(dim, order))
