"""The README's own examples run as written: every Python block, every `medkeras` command that runs on bundled data
(fits cut to a few steps), and every `medkeras.<name>` it mentions exists. A command that needs what is not here
(the user's own data, a PyTorch checkpoint, a server) is listed below with the reason, so a new example is either
run or explained."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LUNG

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
QUICK_FIT = ["--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.run_eagerly=true",
             "--set", "train.verbose=0", "--set", "eval.bootstrap=0"]
# what a README command needs that is not here, by a word it contains
NOT_HERE = {
    "~/.cache/torch": "a torchvision checkpoint the user has",
    "data/chest_ct": "the user's chest CT folder",
    "ct_manifest.csv": "the user's CT manifest",
    "stores/ct224": "a store made from the user's CT",
    "studies.csv": "the user's manifest of CT studies",
    "my_ct.yaml": "the user's own config",
    "train.strategy=multiworker": "several machines",
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """Every `medkeras ...` command in the README's bash blocks (continuation lines joined, comments dropped)."""
    commands = []
    for block in _blocks("bash"):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in line.split("&&"):
                start = f" {part}".find(" medkeras ")  # after any VAR=value prefix (TF_CONFIG='...' medkeras fit)
                if start >= 0:
                    commands.append(part[start:].strip())
    return commands


def _runnable(command: str) -> bool:
    return not any(word in command for word in NOT_HERE)


def test_every_readme_command_is_run_or_explained():
    commands = _commands()
    assert len(commands) >= 8 and all(c.startswith("medkeras ") for c in commands)
    unused = [word for word in NOT_HERE if not any(word in c for c in commands)]
    assert unused == [], f"NOT_HERE explains commands the README no longer has: {unused}"


def _run(args, cwd, timeout=900):
    return subprocess.run([sys.executable, "-m", "medkeras", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_the_readme_commands_that_run_on_bundled_data(tmp_path, tiny_run):
    """Each runnable command as a user types it, in a fresh folder; a run it names (runs/demo-...) is the demo's."""
    run, _ = tiny_run
    ran = []
    for command in _commands():
        if not _runnable(command):
            continue
        args = shlex.split(command)[1:]
        for i, arg in enumerate(args):
            if re.fullmatch(r"runs/demo-\d{8}-\d{6}", arg):  # the README's example run directory
                args[i] = str(run)
        if args[0] == "fit":
            args += QUICK_FIT
        cwd = tmp_path / f"cmd{len(ran)}"
        cwd.mkdir()
        result = _run(args, cwd)
        assert result.returncode == 0, f"{command}: {result.stderr[-1500:]}"
        assert "Traceback" not in result.stderr, command
        ran.append(args[0])
    assert ran.count("fit") >= 2 and "export" in ran


def test_the_readme_python_blocks_run_as_written(tmp_path):
    """Every Python block in a fresh folder holding the files it reads (`slice.dcm`: a real CT slice; `series/`: a
    folder of two contiguous real slices); fits cut to a few steps."""
    shutil.copy(LUNG / "1-13.dcm", tmp_path / "slice.dcm")
    (tmp_path / "series").mkdir()
    for name in ("1-13.dcm", "1-14.dcm"):  # two contiguous real slices: a series folder
        shutil.copy(LUNG / name, tmp_path / "series" / name)
    blocks = _blocks("python")
    assert blocks
    for block in blocks:
        code = block.replace('["train.epochs=2"]', '["train.epochs=2", "train.steps_per_epoch=2", '
                                                   '"train.run_eagerly=true", "train.verbose=0", "eval.bootstrap=0"]')
        code += "\nprint('README block ran')\n"
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0 and "README block ran" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(set(re.findall(r"\bmedkeras(?:\.[A-Za-z_][A-Za-z0-9_]*)+", README))))
def test_every_name_the_readme_shows_exists(name):
    import importlib

    if name.endswith(".json"):  # the file inside a .keras archive, not a name
        return
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    assert callable(obj) or type(obj).__name__ == "module", name


def test_the_readme_lists_every_bundled_config():
    from medkeras.config import bundled_configs

    table = README.split("## Bundled configs", 1)[1].split("\n\n", 2)[1]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M))
    assert listed == set(bundled_configs())
