from dagster import Definitions


def test_definitions_load():
    from assets.definitions import defs

    assert isinstance(defs, Definitions)
    defs.get_repository_def().load_all_definitions()
