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
