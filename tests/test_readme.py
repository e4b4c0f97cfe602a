"""The README's promises: its code blocks run or are checked, and CI runs exactly its test command."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from .helpers import check_own_model_example, install_my_project

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

#: The README's code blocks, each found by what stands before it.
PYTHON_EXAMPLE = re.compile(r"<!-- readme-example.*?-->\n```python\n(.*?)```", re.S)
SAMPLING_SNIPPET = re.compile(r"Sample the trained model from Python.*?```python\n(.*?)```", re.S)
TEST_COMMAND = re.compile(r"<!-- test-command.*?-->\n {4}(.*)\n")
INSTALL_COMMAND = re.compile(r"^ {4}(pip install -e \. && (aesampler .*))$", re.M)
CPU_INSTALL = re.compile(r"^ {4}(pip install torch .*--index-url \S+/cpu)$", re.M)
CHAIN_FORMULA = re.compile(r"^ {4}z0 ~ P\(Z\);.*$", re.M)  # the paper's chain: not code


def test_every_readme_code_block_is_run_or_checked():
    """A code block the tests below do not know would be neither run nor checked."""
    fence = re.compile(r"^```\w*\n(.*?)^```$", re.M | re.S)
    assert sorted(fence.findall(README)) == sorted(
        [PYTHON_EXAMPLE.search(README)[1], SAMPLING_SNIPPET.search(README)[1]]
    )
    # An indented block follows a blank line, or a comment such as the test-command marker.
    indented = re.findall(r"(?:\n\n|-->\n)((?: {4}.*\n)+)", fence.sub("", README))
    known = [CHAIN_FORMULA.search(README)[0], INSTALL_COMMAND.search(README)[1]]
    known.append(CPU_INSTALL.search(README)[1])
    known.append(TEST_COMMAND.search(README)[1])
    assert sorted(block.strip() for block in indented) == sorted(k.strip() for k in known)


def test_readme_install_command_is_valid(monkeypatch, capsys):
    """`pip install -e .` is what CI does too (with the test extras); the aesampler command is
    parsed and its recipe validated here (running it takes minutes: test_readme_sampling_snippet
    runs the same recipe, shrunk)."""
    from aesampler.cli import build_parser, main

    words = shlex.split(INSTALL_COMMAND.search(README)[2])
    assert build_parser().parse_args(words[1:]).command == "run"
    monkeypatch.chdir(ROOT)
    assert main(["validate", *words[2:]]) == 0, capsys.readouterr().err


def test_readme_cpu_install_covers_every_dependency_that_brings_cuda():
    """The CPU-build command installs the PyTorch packages aesampler depends on, all of them, so
    that ``pip install -e .`` afterwards finds them satisfied and pulls no CUDA wheel."""
    from importlib.metadata import requires

    words = shlex.split(CPU_INSTALL.search(README)[1])
    assert words[:2] == ["pip", "install"]
    assert words[words.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    named = {w for w in words[2:] if not w.startswith("-") and "://" not in w}
    declared = [d for d in requires("aesampler") if "extra ==" not in d]  # not the test extras
    torch_family = {re.match(r"[\w-]+", d)[0] for d in declared if d.startswith("torch")}
    assert named == torch_family == {"torch", "torchvision"}


def test_readme_python_example_runs(capsys, monkeypatch):
    """The README's example is docs/examples/own_model.py (tested in test_docs too), run as it
    is shown, on a stand-in for the user's own ``my_project``."""
    match = PYTHON_EXAMPLE.search(README)
    assert match, "README lost its marked Python example"
    assert match.group(1) == (ROOT / "docs" / "examples" / "own_model.py").read_text()
    assert len(match.group(1).strip().splitlines()) <= 16  # "at most about 15 lines"
    project = install_my_project(monkeypatch)
    done = {"__name__": "readme"}
    exec(compile(match.group(1), "README.md", "exec"), done)
    check_own_model_example(done, capsys.readouterr().out.splitlines(), project)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    extraction = re.search(r"^test_command=\$\((.*)\)$", ci, re.M)
    assert extraction, ".ci/run no longer reads its test command from the README"
    extracted = subprocess.run(
        ["bash", "-c", extraction.group(1)], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert extracted == 'pip install -e ".[test]" && python -m pytest -q'
    assert 'bash -c "$test_command"' in ci


def test_readme_sampling_snippet_runs_on_a_trained_run(tmp_path):
    from aesampler.recipe import load_recipe
    from aesampler.training import train

    match = SAMPLING_SNIPPET.search(README)
    assert match, "README lost its sampling snippet"
    run = tmp_path / "quickstart"
    tiny = ["model.width=4", "model.latent_dim=8", "train.max_steps=2", "train.grid_size=4"]
    train(
        load_recipe(ROOT / "recipes" / "quickstart.yaml", [*tiny, f"output.dir={run}"]),
        progress=False,
        log=lambda message: None,
    )
    namespace: dict = {}
    code = match.group(1).replace('"runs/quickstart"', repr(str(run)))
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].x[10].shape == (64, 1, 32, 32)
    assert namespace["info"]["data"]["dataset"] == "mnist5k"


def test_readme_and_docs_links_exist():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
