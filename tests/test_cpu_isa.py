"""The C++ backend's ISA choice: detection, STABLESOFTMAX_CPU_ISA, set_isa and what `info` reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import import_or_skip_off_ci

_C = import_or_skip_off_ci("stablesoftmax._C", "the C++ extension")

ALL_ISAS = ("avx512", "avx2", "neon", "scalar")


def _child(env_value: str | None, code: str = "") -> dict:
    """cpu_features() in a fresh interpreter with STABLESOFTMAX_CPU_ISA set to env_value (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "STABLESOFTMAX_CPU_ISA"}
    if env_value is not None:
        env["STABLESOFTMAX_CPU_ISA"] = env_value
    script = "import json; from stablesoftmax import _C\n" + code + "\nprint(json.dumps(_C.cpu_features()))"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                         timeout=120)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_supported_isas_follow_the_cpu():
    features = _C.cpu_features()
    supported = _C.supported_isas()
    assert supported[-1] == "scalar" and set(supported) <= set(ALL_ISAS)
    assert supported == sorted(supported, key=ALL_ISAS.index)  # best first
    x86 = features["avx2"] or features["avx512f"]
    assert ("avx2" in supported) == (features["avx2"] and features["fma"] and features["f16c"])
    avx512 = all(features[k] for k in ("avx512f", "avx512bw", "avx512vl", "avx512dq", "os_avx512"))
    assert ("avx512" in supported) == (avx512 and features["fma"] and features["f16c"])
    assert ("neon" in supported) == features["neon"]
    assert not (x86 and features["neon"])
    assert features["supported_isas"] == supported


def test_default_is_the_best():
    features = _child(None)
    assert features["isa"] == _C.supported_isas()[0]
    assert features["isa_reason"].startswith("best this CPU")


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_environment_override(isa):
    features = _child(isa)
    if isa in _C.supported_isas():
        assert features["isa"] == isa
        assert features["isa_reason"] == f"STABLESOFTMAX_CPU_ISA={isa}"
    else:  # asked for what this CPU cannot run: the best it can, and why
        assert features["isa"] == _C.supported_isas()[0]
        assert "asked, but" in features["isa_reason"]


def test_environment_names_an_isa_of_another_architecture():
    other = "neon" if "neon" not in _C.supported_isas() else "avx2"
    features = _child(other)
    assert features["isa"] == _C.supported_isas()[0]
    assert f"STABLESOFTMAX_CPU_ISA={other} asked, but" in features["isa_reason"]


def test_environment_typo_is_reported():
    features = _child("avx-512")
    assert features["isa"] == _C.supported_isas()[0]
    assert "'avx-512' is not one of auto, avx512, avx2, neon, scalar" in features["isa_reason"]


def test_set_isa_and_auto_restores_the_environment_choice():
    code = "best = _C.supported_isas()[0]; _C.set_isa(best); assert _C.current_isa() == best; _C.set_isa('auto')"
    features = _child("scalar", code)
    assert features["isa"] == "scalar"  # 'auto' is the default: the environment's choice


def test_set_isa_rejects_unknown_and_unsupported_names():
    with pytest.raises(ValueError, match="expected 'auto', 'avx512', 'avx2', 'neon' or 'scalar'"):
        _C.set_isa("sse2")
    missing = [isa for isa in ALL_ISAS if isa not in _C.supported_isas()]
    for isa in missing:
        with pytest.raises(ValueError, match=f"set_isa\\('{isa}'\\)"):
            _C.set_isa(isa)
    assert _C.current_isa() == _C.supported_isas()[0] or os.environ.get("STABLESOFTMAX_CPU_ISA")


def test_info_prints_the_isa_and_why():
    out = subprocess.run([sys.executable, "-m", "stablesoftmax", "info"], capture_output=True, text=True, check=True,
                         timeout=120).stdout  # fmt: skip
    assert f"isa={_C.current_isa()}" in out
    assert "isa_reason=" in out
