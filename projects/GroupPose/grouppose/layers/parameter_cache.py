"""A cache for tensors that inference derives from parameters (a folded or cast weight)."""

from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ParameterCache"]

Tensors = Tuple[Optional[Tensor], ...]


class ParameterCache:
    """Keeps the result of ``derive()`` until one of its source tensors changes, or ``variant``
    (e.g. the dtype it casts to).

    A source changes when it is replaced (loading weights, moving the module: a new storage) or
    updated in place (an optimizer step: a new version). Under ``torch.compile`` nothing is kept:
    the compiled graph derives the tensors itself.
    """

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._value: Tensors = ()

    def get(
        self,
        sources: Sequence[Optional[Tensor]],
        derive: Callable[[], Tensors],
        variant: Hashable = None,
    ) -> Tensors:
        if torch.compiler.is_compiling():
            return derive()
        key = (variant, *(
            None if t is None else (t.data_ptr(), t._version, t.dtype, t.device) for t in sources
        ))
        if key != self._key:
            self._key, self._value = key, derive()
        return self._value
