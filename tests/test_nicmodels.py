"""The NIC model table agrees with what the guest image ships and with the image variants
(pure logic: reads images/, boots nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_netlab import image, validation
from pytest_netlab.errors import ConfigError
from pytest_netlab.guest_protocol import INIT_MODULES, nic_modules
from pytest_netlab.nicmodels import DEFAULT_NIC_MODEL, NIC_MODELS
from pytest_netlab.topology import NicSpec

MODULES_TXT = Path(__file__).parent.parent / "images" / "modules.txt"


def _shipped() -> dict[str, bool]:
    """images/modules.txt: module -> whether every variant's kernel must have it (no "?")."""
    lines = [ln.strip() for ln in MODULES_TXT.read_text().splitlines()]
    return {ln.rstrip("?"): not ln.endswith("?") for ln in lines if ln and not ln.startswith("#")}


@pytest.mark.parametrize("model", list(NIC_MODELS.values()), ids=list(NIC_MODELS))
def test_each_model_s_driver_is_shipped_in_the_variant_the_table_names(model, monkeypatch):
    monkeypatch.delenv(image.VARIANT_ENV, raising=False)
    shipped = _shipped()
    assert model.modules, f"{model.name}: no driver module named"
    for module in model.modules:
        assert module in shipped, f"{model.name}: {module} is not in {MODULES_TXT}"
        # a driver only the generic kernel has is optional ("?") in the list
        assert shipped[module] == (model.variant == image.DEFAULT_VARIANT), module
    assert image.variant_for(model.modules) == model.variant


def test_the_models_validation_accepts_are_the_table_s():
    for name in NIC_MODELS:
        assert validation.nic_model(name) == name
    with pytest.raises(ConfigError, match="use one of virtio-net-pci, e1000, rtl8139"):
        validation.nic_model("e1000e")
    assert DEFAULT_NIC_MODEL in NIC_MODELS and NicSpec("br1").model == DEFAULT_NIC_MODEL


def test_multiqueue_follows_the_table():
    for model in NIC_MODELS.values():
        spec = NicSpec("br1", model.name, queues=2)
        if model.multiqueue:
            assert spec.validated() is spec
        else:
            with pytest.raises(ConfigError, match="has multiqueue"):
                spec.validated()


def test_the_boot_asks_only_for_drivers_init_does_not_load_itself():
    assert set(INIT_MODULES) <= set(_shipped())
    assert nic_modules([DEFAULT_NIC_MODEL]) == []
    assert nic_modules(["e1000", "rtl8139", "e1000"]) == ["8139cp", "e1000"]
