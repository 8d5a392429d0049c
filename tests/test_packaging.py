"""The install carries every subpackage: setup.cfg lists the packages explicitly (the repository
root is the scdr package), so a folder missing from the list would be missing from a wheel."""

import configparser
from pathlib import Path

from helpers import ROOT


def test_every_package_folder_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {"scdr"} | {
        "scdr." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("scoring", "training", "exported_models")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed, f"missing from setup.cfg: {found - listed}; stale: {listed - found}"


def test_no_generic_top_level_names_are_installed():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert all(p == "scdr" or p.startswith("scdr.") for p in config["options"]["packages"].split())
    assert config["options"]["package_dir"].split() == ["scdr", "=", "."]
    assert (Path(ROOT) / "__init__.py").is_file()
