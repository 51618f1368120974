"""`evisrag pipeline` (and serve, deploy) run DVC's stages, which read the project's params.yaml: another params file
is refused instead of being checked and logged while the stages run with params.yaml."""

from pathlib import Path

import pytest

from evisrag_core.errors import UserError
from flows.stage_plan import check_pipeline_params


@pytest.mark.parametrize("given", ["params.yaml", "./params.yaml", "sub/../params.yaml", "{root}/params.yaml"], ids=str)
def test_the_projects_params_file_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    check_pipeline_params(given.format(root=tmp_path))


@pytest.mark.parametrize("given", ["other.yaml", "configs/study/hard.yaml", "sub/params.yaml"])
def test_another_params_file_is_a_user_error_naming_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"not {given}; copy it there"):
        check_pipeline_params(given)


def test_the_root_is_where_the_worker_runs(tmp_path: Path) -> None:
    check_pipeline_params(tmp_path / "params.yaml", root=tmp_path)
    with pytest.raises(UserError):
        check_pipeline_params(tmp_path / "params.yaml", root=tmp_path / "elsewhere")
