"""Every command of the README's shell blocks names something that exists: each `fruits`
subcommand and option (checked against that subcommand's own --help, so a renamed option
fails here before a reader meets it) and each `make` target (against the Makefile). The
bundled-sample commands themselves run in tests/test_cli.py and CI's `make run`/`make test`."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASH = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def readme_commands() -> list[list[str]]:
    """The README's shell commands, continuation lines joined, comments and $VARs kept."""
    commands = []
    for block in BASH.findall((ROOT / "README.md").read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line.replace('"$(which fruits)"', "fruits")))
    return commands


def test_the_reader_finds_the_commands():
    cmds = readme_commands()
    assert ["make", "run"] in cmds and ["make", "test"] in cmds
    assert any(c[:2] == ["fruits", "serve"] for c in cmds)


def test_every_fruits_option_in_the_readme_exists():
    helps: dict[str, str] = {}
    used = []
    for cmd in readme_commands():
        if "fruits" not in cmd:
            continue
        args = cmd[cmd.index("fruits") + 1 :]
        sub = args[0]
        if sub not in helps:
            out = subprocess.run(
                [sys.executable, "-m", "fruits.cli", sub, "--help"],
                capture_output=True, text=True, timeout=120,
                env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
            )  # fmt: skip
            assert out.returncode == 0, (sub, out.stderr[-500:])
            helps[sub] = out.stdout
        for arg in args[1:]:
            if arg.startswith("--"):
                used.append((sub, arg.split("=", 1)[0]))
    missing = [(s, o) for s, o in used if not re.search(rf"(?<![\w-]){re.escape(o)}\b", helps[s])]
    assert used and not missing, missing


def test_every_make_target_in_the_readme_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = {m.group(1) for m in re.finditer(r"^([\w-]+):", makefile, re.M)}
    wanted = {c[1] for c in readme_commands() if c[0] == "make"}
    assert wanted and wanted <= targets, wanted - targets
