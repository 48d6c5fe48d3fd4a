import importlib
import pickle

import pytest

import anneal

CLASSES = {
    "invalid_config": anneal.InvalidConfigError,
    "invalid_data": anneal.InvalidDataError,
    "not_found": anneal.NotFoundError,
    "already_exists": anneal.AlreadyExistsError,
    "duplicate_content": anneal.DuplicateContentError,
    "in_use": anneal.InUseError,
    "file_not_found": anneal.AnnealFileNotFoundError,
    "io": anneal.AnnealIOError,
    "incompatible_home": anneal.IncompatibleHomeError,
    "cancelled": anneal.CancelledError,
    "callback_failed": anneal.CallbackError,
    "storage": anneal.StorageError,
    "compute": anneal.ComputeError,
    "internal": anneal.InternalError,
}


@pytest.mark.parametrize("code,cls", sorted(CLASSES.items()))
def test_hierarchy_and_class_codes(code, cls):
    assert issubclass(cls, anneal.AnnealError)
    assert issubclass(cls, Exception)
    assert cls.code == code
    assert cls.__module__ == "anneal"
    assert importlib.import_module(cls.__module__) is anneal
    assert getattr(anneal, cls.__name__) is cls


def test_os_error_classes():
    assert issubclass(anneal.AnnealFileNotFoundError, FileNotFoundError)
    assert issubclass(anneal.AnnealIOError, OSError)
    assert not issubclass(anneal.NotFoundError, OSError)


def test_not_found_is_typed(ds, models):
    with pytest.raises(anneal.NotFoundError) as ei:
        ds.get("missing")
    assert ei.value.code == "not_found"
    assert "missing" in str(ei.value)
    with pytest.raises(anneal.NotFoundError) as ei:
        models.resolve("nobody@3")
    assert ei.value.code == "not_found"


def test_invalid_config_names_the_field(models):
    with pytest.raises(anneal.InvalidConfigError) as ei:
        models.create_preset("nano", seed="seven")
    assert (ei.value.code, ei.value.field) == ("invalid_config", "seed")
    with pytest.raises(anneal.InvalidConfigError) as ei:
        models.create_preset("giant")
    assert ei.value.field == "preset" and "nano" in str(ei.value)
    with pytest.raises(anneal.InvalidConfigError) as ei:
        models.list(kind="adapter")
    assert ei.value.field == "kind"


def test_catching_the_base_class(ds):
    with pytest.raises(anneal.AnnealError) as ei:
        ds.get("missing")
    assert isinstance(ei.value, anneal.NotFoundError)


def test_errors_pickle_like_exceptions():
    # Exceptions created by the binding are plain Python exceptions.
    e = anneal.NotFoundError("x")
    assert str(e) == "x"
    assert isinstance(pickle.loads(pickle.dumps(e)), anneal.NotFoundError)


def test_version():
    assert isinstance(anneal.__version__, str) and anneal.__version__.count(".") == 2
    assert anneal._anneal.__version__ == anneal.__version__


def test_stub_and_marker_are_shipped():
    import pathlib

    pkg = pathlib.Path(anneal.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_anneal.pyi").exists()
