"""scripts/fetch-ort.sh picks the wheel for the machine's architecture (tested without
downloading: FETCH_ORT_DRY_RUN / --print-wheel, FETCH_ORT_ARCH in place of `uname -m`)."""
import os
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fetch-ort.sh")


def run(*args, arch=None, dry=True):
    env = dict(os.environ)
    env.pop("FETCH_ORT_DRY_RUN", None)
    if arch is not None:
        env["FETCH_ORT_ARCH"] = arch
    if dry:
        env["FETCH_ORT_DRY_RUN"] = "1"
    p = subprocess.run(["bash", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=60)
    fields = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
    return p.returncode, fields, p.stderr


@pytest.mark.parametrize("arch", ["x86_64", "amd64"])
def test_x86_64_cpu_and_gpu(arch):
    rc, f, err = run(arch=arch)
    assert rc == 0, err
    assert f["package"] == "onnxruntime==1.31.1"
    assert f["arch"] == "x86_64"
    assert f["platforms"].split()[0] == "manylinux_2_28_x86_64"
    rc, f, err = run("--gpu", arch=arch)
    assert rc == 0, err
    assert f["package"] == "onnxruntime-gpu==1.31.1"
    assert f["platforms"].split()[0] == "manylinux_2_28_x86_64"


@pytest.mark.parametrize("arch", ["aarch64", "arm64"])
def test_aarch64_cpu_wheel(arch):
    rc, f, err = run(arch=arch)
    assert rc == 0, err
    assert f["package"] == "onnxruntime==1.31.1"
    assert f["arch"] == "aarch64"
    assert f["platforms"] == "manylinux_2_28_aarch64"


def test_aarch64_gpu_points_at_jetpack():
    rc, f, err = run("--gpu", arch="aarch64")
    assert rc == 2
    assert not f, "nothing may be printed as a wheel"
    assert "no onnxruntime-gpu wheels for aarch64" in err
    assert "runtime.library" in err and "JetPack" in err


def test_print_wheel_flag_without_env():
    rc, f, err = run("--print-wheel", arch="aarch64", dry=False)
    assert rc == 0, err
    assert f["platforms"] == "manylinux_2_28_aarch64"


def test_uname_is_the_default():
    rc, f, err = run()
    assert rc == 0, err
    machine = os.uname().machine
    assert f["arch"] == {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def test_unknown_arch_and_argument():
    rc, _, err = run(arch="riscv64")
    assert rc == 1 and "riscv64" in err and "runtime.library" in err
    rc, _, err = run("--cpu")
    assert rc == 64 and "unknown argument" in err
