"""PyTorch state dict -> Flax variables, as an ordered rule table with an exactly-once check.

A table is a list of :class:`Ignore` entries (each with its reason) and :class:`Rule` entries
(regex over the PyTorch key -> Flax path template + a named layout transform).  Conversion
fails, naming the keys, unless every source key is either ignored or consumed by exactly one
rule and every leaf of the model's variable tree is filled exactly once with the right shape.

The layout transforms live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax.errors import ConversionError

# ---------------------------------------------------------------------------------------------
# Layout transforms (PyTorch NCHW layouts -> Flax NHWC layouts)
# ---------------------------------------------------------------------------------------------

def identity(a: np.ndarray) -> np.ndarray:
    """The tensor unchanged: the default transform, for tensors laid out alike in PyTorch and Flax."""
    return a


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """``Conv2d.weight`` (out, in, kh, kw) -> Flax ``Conv`` kernel (kh, kw, in, out)."""
    return w.transpose(2, 3, 1, 0)


def transposed_conv_1x1_kernel(w: np.ndarray) -> np.ndarray:
    """``ConvTranspose2d.weight`` (in, out, 1, 1) -> kernel (1, 1, in, out) of the equal 1x1 conv.

    Only valid for kernel 1, stride 1, padding 0, where no spatial flip is involved.
    """
    if w.shape[2:] != (1, 1):
        raise ValueError(f'expected a 1x1 transposed convolution, got kernel {w.shape[2:]}')
    return w.transpose(2, 3, 0, 1)


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """``Linear.weight`` (out, in) -> Flax ``Dense`` kernel (in, out)."""
    return w.T


def linear_after_flatten_kernel(channels: int, height: int, width: int) -> Callable:
    """For a ``Linear`` fed by an NCHW flatten (input index ``c*H*W + y*W + x``): the kernel for the
    same layer fed by our NHWC flatten (``(y*W + x)*C + c``)."""

    def transform(w: np.ndarray) -> np.ndarray:
        out = w.shape[0]
        if w.shape[1] != channels * height * width:
            raise ValueError(f'expected {channels * height * width} inputs, got {w.shape[1]}')
        return w.reshape(out, channels, height, width).transpose(2, 3, 1, 0).reshape(-1, out)

    transform.__name__ = f'linear_after_flatten_kernel_{channels}x{height}x{width}'
    return transform


# ---------------------------------------------------------------------------------------------
# Rule table
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` fully matches a PyTorch key; ``target`` is a '/'-path with ``{group}`` fields.

    A group's dots become path separators, so ``(?P<m>layer1\\.0\\.conv1)`` fills
    ``params/backbone/{m}/kernel`` as ``params/backbone/layer1/0/conv1/kernel``.
    """

    pattern: str
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = identity

    def apply(self, key: str) -> str | None:
        """The Flax path for ``key``, or None if ``pattern`` does not fully match it."""
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return None
        return self.target.format(**{k: v.replace('.', '/') for k, v in match.groupdict().items()})


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Source keys matching ``pattern`` are deliberately not loaded, for ``reason``."""

    pattern: str
    reason: str


class ConversionTable(NamedTuple):
    """An ordered rule table: the first matching rule loads a key; ``ignore`` entries skip keys."""

    rules: list[Rule]
    ignore: list[Ignore]


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did: the source keys loaded (and where) and those ignored, by reason."""

    loaded: dict[str, str]  # source key -> target path
    ignored: dict[str, list[str]]  # reason -> source keys

    def summary(self) -> dict:
        """A JSON-able account: the number of keys loaded and, per reason, of keys ignored."""
        return {'loaded': len(self.loaded),
                'ignored': [{'reason': r, 'count': len(k)} for r, k in self.ignored.items()]}


def flatten(tree: Mapping) -> dict[str, object]:
    """Nested dicts -> ``{'a/b/c': leaf}``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out['/'.join(str(p.key) for p in path)] = leaf
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    """``{'a/b/c': leaf}`` -> nested dicts (the inverse of :func:`flatten`)."""
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split('/')
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def _listing(title: str, lines: list[str], limit: int = 20) -> str:
    shown = '\n'.join(f'    {line}' for line in lines[:limit])
    more = f'\n    ... and {len(lines) - limit} more' if len(lines) > limit else ''
    return f'  {title} ({len(lines)}):\n{shown}{more}'


def convert_state_dict(state_dict: Mapping[str, np.ndarray], table: ConversionTable, target: Mapping, *,
                       source: str = 'checkpoint') -> tuple[dict, ConversionReport]:
    """Fill ``target`` (a tree of shape/dtype structs, e.g. from ``jax.eval_shape``) from ``state_dict``.

    Returns the filled tree (numpy arrays) and a report; raises :class:`ConversionError`
    listing unknown, missing, duplicated and mis-shaped keys all at once.
    """
    rules, ignore = table
    wanted = flatten(target)
    filled: dict[str, np.ndarray] = {}
    report = ConversionReport(loaded={}, ignored={})
    unknown, unmapped, clashes, bad = [], [], [], []
    attempted = set()  # Paths some key aimed at but could not fill (reported as 'bad').
    for key, value in state_dict.items():
        reason = next((i.reason for i in ignore if re.fullmatch(i.pattern, key)), None)
        if reason is not None:
            report.ignored.setdefault(reason, []).append(key)
            continue
        rule, path = next(((r, p) for r in rules if (p := r.apply(key)) is not None), (None, None))
        if rule is None:
            unknown.append(f'{key} {tuple(np.shape(value))}')
            continue
        if path not in wanted:
            unmapped.append(f'{key} -> {path} (the model has no such variable)')
            continue
        if path in filled:
            first = next(k for k, p in report.loaded.items() if p == path)
            clashes.append(f'{key} and {first} both fill {path}')
            continue
        spec = wanted[path]
        value = np.asarray(value)
        attempted.add(path)
        if not jnp.issubdtype(value.dtype, jnp.floating):
            bad.append(f'{key}: dtype {value.dtype}, expected a floating-point tensor')
            continue
        try:
            array = np.ascontiguousarray(rule.transform(value)).astype(spec.dtype)
        except ValueError as err:
            bad.append(f'{key} {value.shape}: {err}')
            continue
        if array.shape != tuple(spec.shape):
            bad.append(f'{key}: shape {value.shape} gives {array.shape} at {path}, '
                       f'the model needs {tuple(spec.shape)}')
            continue
        filled[path] = array
        report.loaded[key] = path
    missing = [p for p in wanted if p not in filled and p not in attempted]
    problems = []
    if unknown:
        problems.append(_listing('unknown keys (no rule and not on the ignore list)', unknown))
    if unmapped:
        problems.append(_listing('keys mapped to variables the model lacks', unmapped))
    if clashes:
        problems.append(_listing('keys filling the same variable twice', clashes))
    if bad:
        problems.append(_listing('wrong shape or dtype', bad))
    if missing:
        problems.append(_listing('missing keys: model variables that no key filled', missing))
    if problems:
        raise ConversionError(f'{source} does not match the model:\n' + '\n'.join(problems))
    return unflatten(filled), report
