"""How the suite is spread over pytest-xdist workers (tests/conftest.py, scripts/test.sh)."""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

from tests.conftest import LONG_FILES, RAY_FILES, xdist_group_of


def test_a_file_is_one_group_the_ray_files_share_one_and_each_doc_example_is_its_own() -> None:
    assert xdist_group_of("tests/test_pacer.py::test_a") == "test_pacer.py"
    assert xdist_group_of("tests/test_pacer.py::test_b[1]") == "test_pacer.py"
    ray = {xdist_group_of(f"tests/{name}::test_x[ray]") for name in RAY_FILES}
    assert ray == {"ray"}
    readme = xdist_group_of("tests/test_doc_examples.py::test_example_runs[README.md:69]")
    page = xdist_group_of("tests/test_doc_examples.py::test_example_runs[docs/map.md:25]")
    assert readme != page and "test_doc_examples.py" not in (readme, page)


def test_the_long_files_exist_and_xdist_still_splits_scopes_where_the_suite_overrides() -> None:
    from pathlib import Path

    here = Path(__file__).parent
    assert [name for name in LONG_FILES if not (here / name).is_file()] == []
    # tests/conftest.py's scheduler overrides this method of xdist's LoadScopeScheduling
    assert callable(getattr(LoadScopeScheduling, "_split_scope", None))
