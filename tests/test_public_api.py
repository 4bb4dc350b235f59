"""The public face: exactly these names, each what it says, and no side effects on Prefect."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from prefect import Flow, Task

import prefect_fanout
from prefect_fanout.errors import (
    ConfigurationError,
    CorpusError,
    FanoutError,
    PartitionSpecError,
    PlanValidationError,
)
from prefect_fanout.mapping.corpus import load_items
from prefect_fanout.options import CacheOptions

# The pin: the public face is these names, sorted, and no more than 30.
PUBLIC = [
    "AgentProfile",
    "AgentResult",
    "DispatchResult",
    "FanoutError",
    "Item",
    "LLMEndpoint",
    "MapSummary",
    "PatternResult",
    "Plan",
    "RunOptions",
    "TaskSpec",
    "agent_call",
    "build_request",
    "call_agent",
    "dispatch_flow",
    "dispatch_plan",
    "fan_in",
    "fan_out",
    "load_agents_file",
    "load_plan",
    "map_corpus",
    "map_flow",
    "partition",
    "pattern_result_of",
    "pipeline",
    "result_from_future",
    "run_plan",
    "submit_agent_call",
    "tree",
]
FLOWS = {
    "dispatch_flow": "fanout-dispatch",
    "fan_in": "fanout-fan-in",
    "fan_out": "fanout-fan-out",
    "map_flow": "fanout-map",
    "pipeline": "fanout-pipeline",
    "tree": "fanout-tree",
}
TASKS = {"agent_call": "agent-call"}


def test_all_is_exactly_the_public_names():
    assert prefect_fanout.__all__ == PUBLIC
    assert len(PUBLIC) <= 30


def test_every_error_is_importable_from_the_errors_module():
    import prefect_fanout.errors as errors

    names = [
        "AgentCallError",
        "CallTimeoutError",
        "ConfigurationError",
        "CorpusError",
        "NonRetryableAPIError",
        "OutputValidationError",
        "PartitionSpecError",
        "PatternArgumentError",
        "PlanValidationError",
        "RetriesExhaustedError",
        "RetryAfterTooLongError",
    ]
    for name in names:
        assert issubclass(getattr(errors, name), errors.FanoutError)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_is_what_it_says(name):
    value = getattr(prefect_fanout, name)
    assert not isinstance(value, types.ModuleType), f"{name} is a module"
    if name in FLOWS:
        assert isinstance(value, Flow) and value.name == FLOWS[name]
    elif name in TASKS:
        assert isinstance(value, Task) and value.name == TASKS[name]
    elif name[0].isupper():
        assert inspect.isclass(value), f"{name} is not a class"
        if name.endswith("Error"):
            assert issubclass(value, FanoutError)
    else:
        assert inspect.isfunction(value), f"{name} is not a function"
    assert value.__doc__, f"{name} has no docstring"


def test_partition_is_the_function_even_after_the_map_modules_are_imported():
    import prefect_fanout.flows  # noqa: F401  (imports every map module)
    import prefect_fanout.mapping.partition  # noqa: F401
    from prefect_fanout import partition

    assert inspect.isfunction(partition)


def test_importing_the_package_leaves_prefect_task_engine_untouched():
    script = """
import json, prefect.task_engine as engine
before = {k: id(v) for k, v in vars(engine).items()}
import prefect_fanout
for name in prefect_fanout.__all__:
    getattr(prefect_fanout, name)
import prefect_fanout.cli, prefect_fanout.blocks
after = {k: id(v) for k, v in vars(engine).items()}
print(json.dumps(sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_fanout_error_catches_every_bad_input_error(tmp_path):
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"tasks": [{"task_id": "a", "dependencies": ["a"]}]}')
    bad_corpus = tmp_path / "corpus.jsonl"
    bad_corpus.write_text('{"id": 1}\nnot json\n')
    cases = [
        (lambda: prefect_fanout.load_plan(bad_plan), PlanValidationError),
        (lambda: prefect_fanout.load_plan(tmp_path / "missing.json"), PlanValidationError),
        (lambda: load_items(bad_corpus), CorpusError),
        (lambda: load_items(tmp_path / "missing"), CorpusError),
        (lambda: prefect_fanout.partition([], "count:zero"), PartitionSpecError),
        (
            lambda: prefect_fanout.AgentProfile(prompt_template="{x}").render_user_message("p"),
            ConfigurationError,
        ),
        (lambda: CacheOptions.of("sometimes"), ConfigurationError),
    ]
    for make, kind in cases:
        with pytest.raises(FanoutError) as caught:
            make()
        assert isinstance(caught.value, kind)
        assert isinstance(caught.value, ValueError)  # code that caught ValueError still does
        assert caught.value.exit_code == 2


def test_plan_validation_errors_survive_pickling(tmp_path):
    import pickle

    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text('{"tasks": []}')
    with pytest.raises(PlanValidationError) as caught:
        prefect_fanout.load_plan(bad_plan)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert str(copy) == str(caught.value) and copy.problems == caught.value.problems


def test_the_error_tree_in_errors_py_names_every_error_class():
    """The hierarchy drawn in ``prefect_fanout.errors`` lists every FanoutError subclass."""
    import importlib
    import pkgutil

    import prefect_fanout
    from prefect_fanout import errors

    for module in pkgutil.walk_packages(prefect_fanout.__path__, "prefect_fanout."):
        if not module.name.startswith("prefect_fanout.cli.__main__"):
            importlib.import_module(module.name)
    found, pending = set(), [errors.FanoutError]
    while pending:
        kind = pending.pop()
        found.add(kind.__name__)
        pending.extend(kind.__subclasses__())
    drawn = errors.__doc__ or ""
    assert sorted(name for name in found if name not in drawn) == []
