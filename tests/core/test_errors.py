"""dnnlab.core.errors: a ConfigError names its key and value, under its parent's path."""
from __future__ import annotations

import pytest

from dnnlab.core.errors import ConfigError, require


def test_config_error_under_and_require():
    err = ConfigError.at("epochs", 0, "must be >= 1")
    assert str(err) == "epochs=0: must be >= 1"
    assert str(err.under("trainer")) == "trainer.epochs=0: must be >= 1"
    assert ConfigError("plain").under("x").args == ("plain",)
    require(True, "k", 1, "never")
    with pytest.raises(ConfigError, match="k=2: odd"):
        require(False, "k", 2, "odd")
