import types

import raftkv
import raftkv.client
import raftkv.errors


def public_names(module: types.ModuleType) -> set[str]:
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_raftkv_exports_exactly_its_all() -> None:
    assert set(raftkv.__all__) == public_names(raftkv) | {"__version__"}
    assert set(raftkv.errors.__all__) <= set(raftkv.__all__)
    assert len(raftkv.__all__) == len(set(raftkv.__all__))


def test_raftkv_client_exports_exactly_its_all() -> None:
    assert set(raftkv.client.__all__) == public_names(raftkv.client)
