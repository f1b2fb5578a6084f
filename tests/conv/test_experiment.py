"""ConvSettings (the schema of conf/conv.yaml, composed by Hydra) and run() in-process."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from dnnlab.conv.experiment import ConvSettings, run
from dnnlab.core.dtypes import DType
from dnnlab.core.errors import ConfigError, ShapeError
from dnnlab.run.config import register, settings_of, to_settings

CONF = Path(__file__).resolve().parents[2] / "conf"
FAST = {"real_nets": [], "gradcheck": False,
        "scaling": {"n_min_log2": 3, "n_max_log2": 5, "repeats": 1}}


@pytest.fixture
def composed():
    register("conv", ConvSettings)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        paths = [f"paths.{k}=/tmp" for k in ("root_dir", "data_dir", "output_dir")]  # no run
        yield lambda *o: to_settings(compose(config_name="conv", overrides=paths + list(o)))
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("overrides, error, words", [
    (["chain.n0=4", "chain.filters=[5]"], ShapeError, ["chain.filters[0]=5", "layer 1", "f=5"]),
    (["chain.n0=8", "chain.filters=[3,3,5]"], ShapeError, ["chain.filters[2]", "layer 3", "n_2=4"]),
    (["scaling.n_min_log2=9", "scaling.n_max_log2=7"], ConfigError, ["scaling.n_min_log2=9"]),
    (["scaling.n_min_log2=2"], ShapeError, ["scaling.n_min_log2", "n >= 7"]),
    (["chain=deep", "chain.filters=[3]"], ConfigError, ["chain.filters", "layers is set"]),
    (["chain.filters=null", "chain.layers=[{f:3},{f:9}]", "chain.n0=10"], ShapeError,
     ["chain.layers[1].f", "layer 2"]),
    (["chain.filters=null", "chain.layers=[{f:3,activation:relu},{f:3}]"], ConfigError,
     ["chain.layers[0].activation", "sigmoid"]),
    (["chain.filters=null", "chain.layers=[{f:3},{f:3,activation:tanh}]"], ConfigError,
     ["chain.layers[1].activation", "linear"]),
    (["chain.bias=[true,false]"], ConfigError, ["chain.bias", "3 flags"]),
    (["real_nets=[{name:nonet,input_shape:[1,3,8,8]}]"], ConfigError, ["real_nets[0].name"]),
    (["methods=[matrix]"], ConfigError, ["methods"]),
    (["tolerance=2"], ConfigError, ["tolerance=2"]),
    (["batch=0"], ConfigError, ["batch=0"]),
    (["scaling.threads=0"], ConfigError, ["scaling.threads=0"]),
])
def test_bad_configs_name_their_key(composed, overrides, error, words):
    with pytest.raises(error) as err:
        composed(*overrides)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_wrong_types_fail_while_composing(composed):
    from omegaconf.errors import ConfigKeyError, ValidationError

    for bad in ("dtype=float8", "chain.activation=swish", "batch=abc", "gradcheck=maybe"):
        with pytest.raises(Exception) as err:
            composed(bad)
        cause = err.value.__cause__ or err.value
        assert isinstance(cause, (ValidationError, ConfigKeyError)), bad
    with pytest.raises(Exception, match="nokey"):
        composed("chain.nokey=1")


def test_layer_list_and_presets(composed):
    s = composed("chain.activation=null", "chain.filters=null",
                 "chain.layers=[{f:5,activation:gelu},{f:3,bias:false},{f:3}]")
    spec = s.chain.spec()
    assert spec.filters == [5, 3, 3] and spec.activation == "gelu"
    assert [spec.has_bias(l) for l in (1, 2, 3)] == [True, False, True]
    deep = composed("chain=deep").chain.spec()
    assert deep.depth == 8 and deep.sizes()[-1] == 256 - 34
    assert composed("dtype=float32", "methods=[conv,conv,matrix]").dtype == DType.float32
    assert [m.value for m in composed("methods=[conv,conv,matrix]").methods] == ["conv", "matrix"]


def test_run_small(tmp_path):
    seen = []
    s = settings_of(ConvSettings, {**FAST, "chain": {"activation": "tanh"}}, "conv")
    r = run(s, on_progress=lambda p: seen.append(p.complete))
    assert seen[-1] is True and seen.count(True) == 1 and len(seen) >= 4  # chain + 3 rows + end
    d = r.to_dict()
    assert d["passed"] is True and d["chain"]["sizes"] == [64, 60, 58, 56]
    assert d["chain"]["activation"] == "tanh" and d["gradcheck"] == {"enabled": False}
    assert d["scaling"]["activation"] == "tanh"  # scaling.activation null: the chain's
    assert [row["n"] for row in d["scaling"]["rows"]] == [8, 16, 32]
    assert [t.key for t in r.tables()] == ["comparisons", "scaling"]
    assert [t.key for t in r.display_tables()] == ["chain", "scaling_summary"]
    assert r.summary()["chain/matrix-conv/max_abs_err"] <= 1e-10 and r.failure() is None
    assert "forward" in r.chain_table().to_markdown()
    r.checks["chain"] = False
    r.comparisons[0]["passed"] = False
    assert r.failure().startswith("conv failed (chain; tolerance 1.0e-10): first: matrix vs conv y")
