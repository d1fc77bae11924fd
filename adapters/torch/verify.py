"""Runners for hubfmt.verify from torch modules: named intermediate outputs through forward hooks.

Lives with the torch adapter (the hub never imports a framework); torch is imported inside the
function, as the adapter rules require.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


def runner(module, layers=None):
    """A hubfmt.verify runner for `module`: numpy input -> OrderedDict of named numpy outputs.

    Records the output of every named leaf module (or of the module paths in `layers`), in
    execution order, then the model's output under "output". Runs in eval mode without grad.
    A module called twice records "name#2" for the second call.

    >>> run = runner(torch_model)                                   # doctest: +SKIP
    >>> hubfmt.verify.verify(run, runner(other_model), x).ok        # doctest: +SKIP
    """
    import torch

    named = dict(module.named_modules())
    if layers is None:
        wanted = [n for n, m in named.items() if n and not any(True for _ in m.children())]
    else:
        missing = [n for n in layers if n not in named]
        if missing:
            raise KeyError(f"no module named {', '.join(missing)}")
        wanted = list(layers)

    def run(x: np.ndarray) -> "OrderedDict[str, np.ndarray]":
        outputs: OrderedDict[str, np.ndarray] = OrderedDict()

        def hook_for(name):
            def hook(_mod, _inp, out):
                if isinstance(out, torch.Tensor):
                    key, n = name, 1
                    while key in outputs:
                        n += 1
                        key = f"{name}#{n}"
                    outputs[key] = out.detach().cpu().numpy().copy()
            return hook

        handles = [named[n].register_forward_hook(hook_for(n)) for n in wanted]
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                y = module(torch.from_numpy(np.ascontiguousarray(x)))
        finally:
            for h in handles:
                h.remove()
            module.train(was_training)
        outputs["output"] = y.detach().cpu().numpy()
        return outputs

    return run
