import raftkv.storage


def test_storage_exports_exactly_its_all() -> None:
    public = {name for name in vars(raftkv.storage) if not name.startswith("_")}
    assert set(raftkv.storage.__all__) == public
    assert len(raftkv.storage.__all__) == len(set(raftkv.storage.__all__))
