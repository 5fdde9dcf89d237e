"""A missing optional dependency is one error line naming the extra to install."""

import pytest

from scaletrain.errors import UserError
from scaletrain.extras import require


def test_a_present_module_is_returned():
    assert require("json", "core", "x").dumps([1]) == "[1]"


def test_a_missing_module_names_its_extra():
    with pytest.raises(UserError, match=r"^compress --method onnx-int8 needs the package 'no_such_pkg_xyz', "
                                        r"which is not installed: pip install 'scaletrain\[compress\]'$"):
        require("no_such_pkg_xyz.sub", "compress", "compress --method onnx-int8")


@pytest.mark.parametrize("missing, what", [("transformers", "model.name=hf"), ("peft", "model.lora")])
def test_hf_features_name_the_hf_extra(monkeypatch, missing, what):
    """transformers and peft are the optional extra [hf]: without them, the features that need
    them say which extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    if missing == "transformers":
        from scaletrain.models import build_model

        build = lambda: build_model("hf", {"config": {"model_type": "llama", "vocab_size": 8}, "seq_len": 4})  # noqa: E731
    else:
        from torch import nn

        from scaletrain.models.lora import apply_lora

        build = lambda: apply_lora(nn.Linear(2, 2), {"rank": 1, "alpha": 1.0, "dropout": 0.0,  # noqa: E731
                                                     "target_modules": ["x"]})
    with pytest.raises(UserError, match=rf"^{what} needs the package '{missing}', which is not installed: "
                                        r"pip install 'scaletrain\[hf\]'$"):
        build()
