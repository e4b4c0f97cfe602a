"""The README's promises: its Python example runs, and CI runs exactly its test command."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_python_example_runs(capsys):
    match = re.search(r"<!-- readme-example.*?-->\n```python\n(.*?)```", README, re.S)
    assert match, "README lost its marked Python example"
    exec(compile(match.group(1), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "(0, 1, 5, 10)",
        "torch.Size([64, 1, 28, 28])",
        "torch.Size([64, 16])",
        "torch.Size([32, 1, 28, 28])",
    ]


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

    match = re.search(r"Sample the trained model from Python.*?```python\n(.*?)```", README, re.S)
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
