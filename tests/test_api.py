"""The public surface, the error table and config validation."""

from __future__ import annotations

import pytest

import isolate
from isolate import Config, InvalidConfig, Limits
from isolate.errors import ERRORS, GuestError, IsolateError


def test_public_api_is_curated() -> None:
    assert sorted(isolate.__all__) == sorted(
        [
            "ABI_VERSION", "NAME_PATTERN", "AbiViolation", "CacheStatistics", "Config", "GuestError", "Host",
            "HostStatistics", "InvalidConfig", "InvalidModule", "InvalidName", "InvalidRequest", "IsolateError",
            "Limits", "LogRecord", "MemoryLimit", "ModuleInfo", "ModuleTooLarge", "NotFound", "Overloaded",
            "Request", "Response", "ResponseTooLarge", "ServerConfig", "StackOverflow", "StorageError", "Timeout",
            "Trap", "VersionInfo",
        ]
    )
    for name in isolate.__all__:
        assert hasattr(isolate, name), name


def test_only_the_engine_imports_wasmtime() -> None:
    from pathlib import Path

    root = Path(isolate.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "import wasmtime" in path.read_text() or "from wasmtime" in path.read_text()
    ]
    assert offenders and all(p.startswith("engine/") for p in offenders), offenders


def test_error_kinds_are_unique_and_documented() -> None:
    kinds = [e.kind for e in ERRORS]
    assert len(kinds) == len(set(kinds))
    doc = isolate.errors.__doc__ or ""
    for error in ERRORS:
        assert issubclass(error, IsolateError)
        assert 400 <= error.status <= 599
        assert error.__name__ in doc and error.kind in doc and str(error.status) in doc


def test_diagnostic_is_machine_readable() -> None:
    exc = isolate.Timeout("guest ran too long", timeout_ms=100.0)
    assert exc.to_dict() == {"error": "timeout", "detail": "guest ran too long", "timeout_ms": 100.0}
    assert isinstance(exc, GuestError) and exc.status == 504


def test_limits_defaults_and_validation() -> None:
    limits = Limits()
    assert (limits.memory, limits.timeout, limits.response_size) == (128 << 20, 0.1, 10 << 20)
    assert limits.merged({"timeout": 2}).timeout == 2
    with pytest.raises(InvalidConfig, match="unknown limit"):
        limits.merged({"cpu": 1})
    with pytest.raises(InvalidConfig):
        Limits(memory=10)
    with pytest.raises(InvalidConfig):
        Limits(timeout=0)


def test_config_rejects_out_of_range_values() -> None:
    with pytest.raises(InvalidConfig):
        Config(pool_instances=0)
    with pytest.raises(InvalidConfig):
        Config(max_memory_limit=1 << 20)  # below the default memory limit
    config = Config(max_memory_limit=256 << 20)
    with pytest.raises(InvalidConfig, match="exceeds the host maximum"):
        config.check_limits(Limits(memory=512 << 20))


def test_config_from_env_reads_only_isolate_variables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = Config.from_env({"ISOLATE_DATA_DIR": str(tmp_path), "ISOLATE_POOL_INSTANCES": "7", "HOME": "/x"})
    assert config.data_dir == tmp_path and config.pool_instances == 7
    with pytest.raises(InvalidConfig, match="ISOLATE_POOL_INSTANCES"):
        Config.from_env({"ISOLATE_POOL_INSTANCES": "many"})
