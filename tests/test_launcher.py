"""The Triton launcher's parts that need no running server: which models a repository holds, free ports, and the
python-backend repository it generates for the embedded server."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from simclr.server.launcher import ServerOptions, _python_backend_repository, find_triton, model_names


def test_model_names_are_the_folders_with_a_config_and_a_version(tiny_repo: Path, tmp_path: Path) -> None:
    assert model_names(tiny_repo) == ["tiny", "tiny_bytes", "tiny_preprocess"]
    (tmp_path / "half" / "1").mkdir(parents=True)  # a version but no config.pbtxt
    with pytest.raises(FileNotFoundError, match="no models"):
        model_names(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        model_names(tmp_path / "missing")


def test_the_embedded_server_is_found() -> None:
    binary = find_triton()
    assert binary.path.is_file() and binary.path.name == "tritonserver"


def test_python_backend_repository_mirrors_each_model(tiny_repo: Path, tmp_path: Path) -> None:
    options = ServerOptions(tiny_repo, instances=2, onnxruntime_threads=3)
    generated = _python_backend_repository(tiny_repo, tmp_path, options)
    config = text_format.Parse((generated / "tiny" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "python" and config.name == "tiny"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert config.parameters["onnxruntime_threads"].string_value == "3"
    for version in ("1", "2"):
        served = generated / "tiny" / version
        assert (served / "model.py").is_file()
        assert (served / "model.onnx").resolve() == (tiny_repo / "tiny" / version / "model.onnx").resolve()
    for name in ("tiny_preprocess", "tiny_bytes"):  # python-backend models and ensembles are served as they are
        assert (generated / name / "config.pbtxt").read_text() == (tiny_repo / name / "config.pbtxt").read_text()
        assert sorted(p.name for p in (generated / name / "2").iterdir()) == \
            sorted(p.name for p in (tiny_repo / name / "2").iterdir())
