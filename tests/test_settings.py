"""tomoclust.settings: the table of readers covers the schema, defaults agree, rules get only
the keys they read, cross-key checks name the key, renamed keys still work with a warning."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from rerun_matrix import schema_leaf_keys, schema_node
from tomoclust import TomoclustError
from tomoclust.settings import (
    RENAMED,
    apply_renames,
    check_config,
    leaf_fields,
    readers,
    rule_params,
    rule_value,
)


@pytest.fixture
def config(repo):
    """The demo config with the schema's defaults filled in."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    validate(cfg, str(repo / "schemas" / "config.schema.yaml"))
    return cfg


def test_every_schema_key_has_a_settings_field_with_the_same_default(repo):
    fields = leaf_fields()
    assert set(fields) == set(schema_leaf_keys(repo))
    for key, f in fields.items():
        node = schema_node(repo, key)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if key == "transfer.templates":  # the schema's default is the SHREC'21 library
            continue
        assert default == node.get("default"), key


def test_every_key_is_read_by_a_rule_or_shapes_the_dag():
    for key, f in leaf_fields().items():
        meta = f.metadata
        modes = {"truth", "simulation", "subtomograms", "copick", "pretrained"}
        assert meta["shapes_dag"] or readers(key, modes), key


def test_rule_params_hold_only_the_keys_the_rule_reads(config):
    assert rule_params(config, "pick", "extraction") == {
        "box": config["extraction"]["box"], "voxel_size": config["extraction"]["voxel_size"]}
    assert "normalise" in rule_params(config, "extract", "extraction")
    ctf = rule_params(config, "average_class", "simulation", {"truth"})
    assert set(ctf) == {"ctf"} and set(ctf["ctf"]) == set(config["simulation"]["ctf"])
    with pytest.raises(TomoclustError, match="rule average_class reads no key of config "
                                             "section 'simulation'"):
        rule_params(config, "average_class", "simulation")  # the CTF only with ground truth
    with pytest.raises(TomoclustError, match=r"rule pick is not declared to read config "
                                             r"extraction\.normalise"):
        rule_value(config, "pick", "extraction.normalise")


def test_the_demo_config_passes(config):
    s = check_config(config)
    assert s.clustering.algorithm == config["clustering"]["algorithm"]
    assert s.simulation.ctf.voltage_kv == config["simulation"]["ctf"]["voltage_kv"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.picking.threshold = 1.0


@pytest.mark.parametrize("section,changes,key,words", [
    ("clustering", {"algorithm": "kmeans", "k": None}, "clustering.k", "needs a fixed number"),
    ("clustering", {"k": None, "k_min": 5, "k_max": 3}, "clustering.k_min", "is above"),
    ("simulation", {"tilt_min": -30.0, "tilt_max": -40.0}, "simulation.tilt_min", "not below"),
    ("averaging", {"angular_step": 5.0, "local_step": 10.0}, "averaging.local_step", "coarser"),
    ("transfer", {"snr_min": 2.0, "snr_max": 1.0}, "transfer.snr_min", "is above"),
])
def test_cross_key_checks_name_the_key(config, section, changes, key, words):
    config[section].update(changes)
    with pytest.raises(TomoclustError, match=rf"^config {key}: .*{words}"):
        check_config(config)


def test_fewshot_needs_exactly_one_support_source(config):
    config["methods"] = ["protonet3d"]
    config["fewshot"].update(support="", support_templates=[], support_from_truth=0)
    with pytest.raises(TomoclustError, match=r"^config fewshot.support: few-shot .* needs a "
                                             "support set"):
        check_config(config)
    config["fewshot"].update(support="s.star", support_from_truth=3)
    with pytest.raises(TomoclustError, match=r"^config fewshot.support_from_truth: more than "
                                             "one few-shot support set"):
        check_config(config)
    config["fewshot"].update(support="")
    check_config(config)


def test_renamed_keys_are_read_with_a_warning():
    old, new = "averaging.max_shift", RENAMED["averaging.max_shift"]
    cfg = {"averaging": {"max_shift": 2.5}}
    with pytest.warns(FutureWarning, match=f"config {old} is renamed to {new}"):
        assert apply_renames(cfg) == [old]
    assert cfg == {"averaging": {"max_shift_vox": 2.5}}
    with pytest.raises(TomoclustError, match=f"config {old}: renamed to {new}; give only"):
        apply_renames({"averaging": {"max_shift": 2.5, "max_shift_vox": 2.5}})
