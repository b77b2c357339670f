"""scripts/setup.sh as a user who is neither root nor a sudoer, and on a machine without cargo:
it must say exactly what to run instead of failing with `sudo: command not found`."""
import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fake_path(tmp_path, installed, uid):
    """A PATH holding only the tools setup.sh uses: `id` and `dpkg-query` are fakes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["bash", "dirname", "grep", "sed", "cat"]:
        os.symlink(shutil.which(tool), bin_dir / tool)
    (bin_dir / "id").write_text(f"#!{shutil.which('bash')}\necho {uid}\n")
    status = "install ok installed" if installed else "unknown ok not-installed"
    (bin_dir / "dpkg-query").write_text(f"#!{shutil.which('bash')}\nprintf '{status}'\n")
    for f in ["id", "dpkg-query"]:
        (bin_dir / f).chmod(0o755)
    return str(bin_dir)


def run(path, *args):
    env = {"PATH": path, "HOME": "/nonexistent"}
    return subprocess.run(
        [shutil.which("bash"), str(ROOT / "scripts/setup.sh"), *args], env=env, capture_output=True, text=True
    )


def test_no_root_no_sudo_says_what_to_run(tmp_path):
    r = run(fake_path(tmp_path, installed=False, uid=1000))
    assert r.returncode == 1
    assert "sudo: command not found" not in r.stderr
    assert "not root and has no sudo" in r.stderr
    assert "apt-get install -y --no-install-recommends libclang-dev" in r.stderr


def test_check_without_cargo_points_to_rustup(tmp_path):
    r = run(fake_path(tmp_path, installed=True, uid=1000), "--check")
    assert r.returncode == 1
    assert "rustup" in r.stdout and "sh.rustup.rs" in r.stdout
