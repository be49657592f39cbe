"""``portable`` pins every kernel library an evaluation reaches, and a job's cache key names the kernels: the
pinned set (any machine) or this machine's CPU (so a jobs folder carried to another machine is not mixed)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from conftest import load_script

from l2o_gym.experiments import compare
from l2o_gym.experiments.compare import PORTABLE_ENV, CompareConfig, Section, job_key, plan

AVX2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.skipif(not AVX2, reason="needs an x86-64 CPU with AVX2")
def test_portable_environment_pins_torch_and_openblas() -> None:
    code = ("import json, torch, numpy; from threadpoolctl import threadpool_info; "
            "print(json.dumps([torch.backends.cpu.get_cpu_capability(), "
            "sorted({i.get('architecture') for i in threadpool_info() if i['internal_api'] == 'openblas'})]))")
    env = {**os.environ, **PORTABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    capability, openblas = json.loads(out.strip().splitlines()[-1])
    assert capability == "AVX2"
    assert openblas in ([], ["Haswell"])  # NumPy/SciPy's OpenBLAS (CG, L-BFGS) on its AVX2 kernels
    assert {"MKL_CBWR", "ONEDNN_MAX_CPU_ISA"} <= set(PORTABLE_ENV)  # torch's GEMMs and convolutions


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    real = pathlib.Path.read_text

    def read_text(self: pathlib.Path, *args, **kwargs) -> str:
        if str(self) == "/proc/cpuinfo":
            return f"vendor_id\t: Vendor\nmodel name\t: {model}\nflags\t\t: fpu sse2 avx2\n"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)


def test_native_keys_name_the_machine_portable_keys_do_not(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cfg = CompareConfig(sections=[Section("l2o/Quadratic-v0", ["sgd"], 5, n_problems=2)], out=str(tmp_path))
    (job,) = plan(cfg)
    keys = {}
    for model in ("CPU A", "CPU B"):
        _fake_cpu(monkeypatch, model)
        keys[model] = (job_key(job.task(cfg), portable=False), job_key(job.task(cfg), portable=True))
        monkeypatch.undo()
    assert keys["CPU A"][0] != keys["CPU B"][0]  # another machine's saved job is run again, not mixed in
    assert keys["CPU A"][1] == keys["CPU B"][1]  # pinned kernels: the same numbers on both, so the same key
    assert compare.kernel_fingerprint(True) == {"portable": PORTABLE_ENV}


def test_compare_script_is_portable_by_default(tmp_path) -> None:
    parser = load_script("compare").build_parser()
    base = ["--env", "l2o/Quadratic-v0", "--out", str(tmp_path / "o")]
    assert parser.parse_args(base).portable is True
    assert parser.parse_args([*base, "--no-portable"]).portable is False


def test_kernel_check_compares_with_the_reference(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from l2o_gym.experiments import benchmark

    monkeypatch.setattr(benchmark, "KERNEL_JOBS", (("tiny", "l2o/Quadratic-v0", "sgd", 3, 2, "ATen"),))
    (row,) = benchmark.kernel_check(str(tmp_path / "a"), portable=False)
    assert row["reference"] is None and row["same"] is None  # unpinned numbers are this machine's: no verdict
    monkeypatch.setattr(benchmark, "KERNEL_REFERENCE", {"tiny": row["value"]})
    (row2,) = benchmark.kernel_check(str(tmp_path / "b"), portable=False)
    assert row2["same"] is None
    if AVX2:
        (pinned,) = benchmark.kernel_check(str(tmp_path / "c"), portable=True)
        monkeypatch.setattr(benchmark, "KERNEL_REFERENCE", {"tiny": pinned["value"]})
        assert benchmark.kernel_check(str(tmp_path / "d"), portable=True)[0]["same"] is True
        monkeypatch.setattr(benchmark, "KERNEL_REFERENCE", {"tiny": pinned["value"] * (1 + 1e-12)})
        assert benchmark.kernel_check(str(tmp_path / "e"), portable=True)[0]["same"] is False


SCRIPT = """
import argparse, os, sys
import torch
from l2o_gym.experiments import cli

p = argparse.ArgumentParser()
cli.add_portable_flag(p)

def body(args):
    cli.pin_kernels(args)
    print(torch.backends.cpu.get_cpu_capability(), os.environ.get("OPENBLAS_CORETYPE"), os.environ.get("MKL_CBWR"))
    return 0

sys.exit(cli.run(p, body, None))
"""


@pytest.mark.skipif(not AVX2, reason="needs an x86-64 CPU with AVX2")
def test_a_script_restarts_itself_with_pinned_kernels(tmp_path) -> None:
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    pinned = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True)
    assert pinned.stdout.split() == ["AVX2", "Haswell", "AVX2"]
    native = subprocess.run([sys.executable, str(script), "--no-portable"], env=env, capture_output=True, text=True,
                            check=True)
    assert native.stdout.split() == [torch.backends.cpu.get_cpu_capability(), "None", "None"]


def test_main_called_in_process_keeps_the_callers_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from l2o_gym import kernels
    from l2o_gym.experiments import cli

    monkeypatch.setattr(kernels.os, "execve", lambda *a: pytest.fail("main(argv) must not restart the caller"))
    p = argparse.ArgumentParser()
    cli.add_portable_flag(p)
    seen = []
    assert cli.run(p, lambda args: (cli.pin_kernels(args), seen.append(args.portable))[1] or 0, []) == 0
    assert seen == [True]


def test_native_key_names_kernel_variables_set_in_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in PORTABLE_ENV:
        monkeypatch.delenv(k, raising=False)
    plain = compare.kernel_fingerprint(False)
    assert "kernel_env" not in plain
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    assert compare.kernel_fingerprint(False) == {**plain, "kernel_env": {"MKL_CBWR": "AVX2"}}


def test_training_summary_records_the_kernels(tmp_path) -> None:
    import json

    main = load_script("train_lstm").main
    out = tmp_path / "run"
    assert main(["--env", "l2o/Quadratic-v0", "--episodes", "1", "--n-problems", "2", "--horizon", "4", "--unroll", "2",
                 "--n-val", "2", "--baselines", "--out", str(out), "--quiet"]) == 0
    kernels = json.loads((out / "summary.json").read_text())["kernels"]
    from l2o_gym.kernels import pinned

    assert kernels == {"pinned": pinned(), "capability": torch.backends.cpu.get_cpu_capability()}
