import pytest

from histo_bench.registry import Registry


def test_register_get_names():
    reg: Registry = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register("beta_slide")
    def beta():
        return 1

    assert reg.get("alpha") is Alpha and reg.get("beta_slide")() == 1
    assert reg.names() == ["alpha", "beta_slide"] and reg.names("*slide") == ["beta_slide"]
    assert "alpha" in reg and "gamma" not in reg
    with pytest.raises(KeyError, match="unknown widget 'gamma'; valid names: alpha, beta_slide"):
        reg.get("gamma")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(object())
