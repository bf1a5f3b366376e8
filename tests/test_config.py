"""Run configuration: the shipped configs load; bad ones are refused naming the key."""

from __future__ import annotations

import pytest

from twinkles.config import ConfigError, RunConfig, load_run, load_run_config, parse_run_config

from conftest import RUNS


@pytest.mark.parametrize("name", ["tiny", "demo", "run1", "run1_y1"])
def test_shipped_configs_load(name):
    config = load_run_config(RUNS / f"{name}.yaml")
    assert config.name == name


def test_run1_is_run1():
    config = load_run_config(RUNS / "run1.yaml")
    assert (config.sensor.width_px, config.sensor.height_px) == (4000, 4072)
    assert config.cadence.n_visits == 1227 and config.cadence.n_years == 10
    assert config.sensor.pixel_scale == 0.2


def test_run1_y1_is_run1_but_its_first_year():
    run1 = load_run_config(RUNS / "run1.yaml").model_dump()
    year1 = load_run_config(RUNS / "run1_y1.yaml").model_dump()
    differ = {k for k in run1 if run1[k] != year1[k]}
    assert differ == {"name", "cadence"}
    cadence = {k for k in run1["cadence"] if run1["cadence"][k] != year1["cadence"][k]}
    assert cadence == {"n_years", "n_visits"}
    assert year1["cadence"]["n_years"] == 1 and year1["cadence"]["n_visits"] == 123


def test_run_directory_is_next_to_the_config(tmp_path):
    path = tmp_path / "myrun.yaml"
    path.write_text("seed: 3\n")
    run = load_run(path)
    assert run.dir == tmp_path / "myrun"
    assert run.butler.root == tmp_path / "myrun" / "repo"


def _problems(data):
    with pytest.raises(ConfigError) as info:
        parse_run_config(data, "test.yaml", default_name="t")
    return info.value.problems, str(info.value)


def test_unknown_key_is_named():
    problems, message = _problems({"sensor": {"widht_px": 100}})
    assert problems == ["sensor.widht_px: unknown key"]
    assert "test.yaml" in message


def test_wrong_type_is_named():
    problems, _ = _problems({"cadence": {"n_visits": "many"}})
    assert len(problems) == 1 and problems[0].startswith("cadence.n_visits:")
    assert "'many'" in problems[0]


def test_float_for_int_is_refused():
    problems, _ = _problems({"sensor": {"width_px": 256.0}})
    assert problems[0].startswith("sensor.width_px:")


def test_impossible_values_are_named():
    problems, _ = _problems(
        {"cadence": {"n_visits": -3, "filters": ["g", "q"]}, "sensor": {"pixel_scale": 0}}
    )
    keys = sorted(p.split(":")[0] for p in problems)
    assert keys == ["cadence.filters[1]", "cadence.n_visits", "sensor.pixel_scale"]


def test_cross_field_problems_are_named():
    problems, _ = _problems({"truth": {"star_mag_min": 27.0}, "cadence": {"filters": ["g", "g"]}})
    assert "truth.star_mag_min: must not exceed star_mag_max" in problems
    assert any(p.startswith("cadence.filters: repeated") for p in problems)


def test_every_problem_in_one_message():
    problems, message = _problems({"seed": "x", "sensor": {"height_px": 1}, "bogus": 1})
    assert len(problems) == 3
    for key in ("seed", "sensor.height_px", "bogus"):
        assert key in message


def test_yaml_exponent_floats(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("truth:\n  star_density: 2e4\n  galaxy_density: 1.5E+5\n")
    config = load_run_config(path)
    assert config.truth.star_density == 2.0e4 and config.truth.galaxy_density == 1.5e5


def test_not_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere\.yaml"):
        load_run_config(tmp_path / "nothere.yaml")


def test_every_field_is_documented():
    def walk(model):
        for name, info in model.model_fields.items():
            sub = info.annotation
            if isinstance(sub, type) and issubclass(sub, RunConfig.__mro__[1]):
                yield from walk(sub)
            else:
                yield name, info

    undocumented = [name for name, info in walk(RunConfig) if not info.description]
    assert undocumented == []
