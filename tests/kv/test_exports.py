import raftkv.kv


def test_kv_exports_exactly_its_all() -> None:
    public = {name for name in vars(raftkv.kv) if not name.startswith("_")}
    assert set(raftkv.kv.__all__) == public
    assert len(raftkv.kv.__all__) == len(set(raftkv.kv.__all__))
