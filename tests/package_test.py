"""tfwd/__init__.py: the public modules, lazily imported from the package root."""

import subprocess
import sys

import pytest

import tfwd


def test_import_tfwd_imports_no_heavy_module(root):
    heavy = "('tensorflow', 'keras', 'numpy', 'matplotlib')"
    code = f"import sys, tfwd; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", tfwd.PUBLIC_MODULES)
def test_every_public_module_is_an_attribute(name):
    module = getattr(tfwd, name)
    assert module.__name__ == f"tfwd.{name}"
    assert name in dir(tfwd)


def test_the_design_names_resolve_from_the_root():
    for name in (
        "models.cifar_resnet",
        "models.activation_model",
        "metrics.CKA",
        "metrics.linear_cka",
        "cka.compare_models",
        "cka.analyze",
        "cka.analyze_models",
        "blocks.find_block_structure",
        "data.Data",
    ):
        module, attr = name.split(".")
        assert callable(getattr(getattr(tfwd, module), attr)), name


def test_unknown_attribute_names_the_available_ones():
    with pytest.raises(AttributeError) as info:
        tfwd.model  # noqa: B018 - a typo of "models"
    message = str(info.value)
    assert message.startswith("module 'tfwd' has no attribute 'model'. Available: models, metrics, data, cka,")
    assert all(name in message for name in tfwd.PUBLIC_MODULES)
