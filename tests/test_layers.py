"""The layout holds at run time too: serving loads no training code, no Trainer, no scikit-learn,
and nothing happens at import (the import-linter contracts in pyproject.toml hold it statically)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO, cli_env

LOADED = """
import json, sys, warnings
{prelude}
before_filters, before_env = list(warnings.filters), dict(__import__("os").environ)
import {module}
print(json.dumps({{
    "modules": sorted(sys.modules),
    "filters_changed": warnings.filters != before_filters,
    "env_changed": dict(__import__("os").environ) != before_env,
}}))
"""
TRAINING = ("yelp_lora.training", "yelp_lora.evaluation", "yelp_lora.metrics", "transformers.trainer", "sklearn")


# Libraries whose own imports change warning filters; loaded first, so only our modules' changes count.
LIBRARIES = "import torch, transformers, datasets, peft, sklearn, pyarrow, fastapi"


def imported(module: str, prelude: str = "") -> dict:
    """What importing `module` in a fresh interpreter (after `prelude`) loads and changes."""
    code = LOADED.format(module=module, prelude=prelude)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=cli_env(), cwd=REPO, timeout=300, check=True)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["yelp_lora.serving.app", "yelp_lora.serving.agent", "yelp_lora.inference.batch"])
def test_serving_and_inference_load_no_training_code(module):
    loaded = imported(module)["modules"]
    assert module in loaded
    assert not [name for name in loaded if name.startswith(TRAINING)], [n for n in loaded if n.startswith(TRAINING)]


def test_importing_the_package_changes_nothing():
    """No import-time side effects: warning filters and the environment are set by the CLI's main only."""
    every_module = "yelp_lora, pkgutil, importlib; [importlib.import_module(m.name) for m in " \
        "pkgutil.walk_packages(yelp_lora.__path__, 'yelp_lora.') if not m.name.endswith('__main__')]"
    changes = imported(every_module, prelude=LIBRARIES)
    assert "yelp_lora.serving.app" in changes["modules"] and "yelp_lora.bench.run" in changes["modules"]
    assert not changes["filters_changed"] and not changes["env_changed"]
