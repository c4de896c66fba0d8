"""tfwd: how the width and depth of neural networks shape what they learn.

A Keras 3 / TensorFlow reproduction of Nguyen, Raghu & Kornblith, "Do Wide and Deep
Networks Learn the Same Things?" (ICLR 2021): CIFAR and ImageNet ResNets, a streaming
minibatch CKA metric, and the block-structure analyses.

`import tfwd` alone gives every public module as an attribute:

- tfwd.models: `cifar_resnet`, `imagenet_resnet`, taps and `activation_model`; `ARCHITECTURES`,
  the model families a run can train.
- tfwd.metrics: the streaming `CKA` metric and full-batch references (`linear_cka`).
- tfwd.data: TFDS input pipelines (`Data`, `DataConfig`).
- tfwd.cka: CKA of several models in one pass over the data (`compare_models`, `analyze`).
- tfwd.blocks, tfwd.findings, tfwd.dominant_datapoints, tfwd.pc, tfwd.probes, tfwd.prune_blocks,
  tfwd.compare_predictions: the paper's analyses. An analysis with a binary has one name for its
  module, its binary and its output folder: tfwd.pc, bin/pc, RUN/pc_<taps>_<split>/.
- tfwd.analyses: the registry of the analyses (each: `KIND`, `analyze` -> folder, `load` -> result),
  which tfwd.report runs.
- tfwd.report, tfwd.runs, tfwd.sweeps, tfwd.training: run directories, training, sweeps, reports.
- tfwd.plots: matplotlib figures of the analyses' results.
- tfwd.callbacks: `CKAMonitor`, the CKA heatmap and its block structure in TensorBoard as a model trains.

Lazy imports, one rule for the whole package: a module imports what it needs at its top,
except two kinds of import, which sit inside the one function that needs them, with a
comment saying which kind:

1. matplotlib (`tfwd.plots`, `tfwd.html`), in the function that draws, so computing an
   analysis never loads it;
2. TensorFlow in backend-neutral Keras code (`tfwd.metrics`, `tfwd.models.layers`), on its
   TensorFlow-only path, so the code also runs under JAX and PyTorch.

`tfwd.errors`, `tfwd.atomic`, `tfwd.layer_names`, `tfwd.faults` and `tfwd.plots` import neither
TensorFlow nor Keras, so plotting and the binaries' error handling never load them. The
package root imports nothing but the standard library, so `import tfwd` is instant: a public
module is imported on its first use as an attribute (a module `__getattr__`, PEP 562) and is
then an ordinary attribute of the package; `import tfwd.models` and `from tfwd import cka`
work as always. Never import a submodule at the top of this file; a new public module goes
into `PUBLIC_MODULES` (and the README), nowhere else.

Example:
    >>> import tfwd
    >>> model = tfwd.models.cifar_resnet(depth=8, width=0.25)
    >>> tfwd.models.tap_names(model, "blocks")
    ['stem_relu', 'stage1_block1_out', 'stage2_block1_out', 'stage3_block1_out', 'logits']
    >>> "cka" in dir(tfwd)
    True
"""

import importlib as _importlib

PUBLIC_MODULES = (
    "models",
    "metrics",
    "data",
    "cka",
    "blocks",
    "findings",
    "dominant_datapoints",
    "pc",
    "probes",
    "prune_blocks",
    "compare_predictions",
    "analyses",
    "report",
    "runs",
    "sweeps",
    "training",
    "plots",
    "callbacks",
)
__all__ = list(PUBLIC_MODULES)


def __getattr__(name: str):
    """Imports a public module on first use (PEP 562); anything else is an AttributeError."""
    if name in PUBLIC_MODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tfwd' has no attribute {name!r}. Available: {', '.join(PUBLIC_MODULES)}.")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC_MODULES))
