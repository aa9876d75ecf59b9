"""The data folders ship as package data, so a non-editable install finds them."""

from importlib.resources import files

import experiments
import latency_tables


def test_data_folders_are_installed_with_the_package():
    assert files("latency_tables").joinpath("README.md").is_file()
    assert files("experiments").joinpath("README.md").is_file()
    assert isinstance(latency_tables.shipped_tables(), dict)
    assert isinstance(experiments.shipped_configs(), dict)


def test_top_level_packages_import():
    import distill
    import nas
    import search_spaces

    assert nas.__version__ and distill.__doc__ and search_spaces.ArchConfig
