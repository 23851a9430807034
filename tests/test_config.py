import pytest

from pipeline.config import (
    ConfigError,
    ExperimentConfig,
    choice_keys,
    load_config,
    save_config,
    to_dict,
)


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_file_values(tmp_path):
    config = load_config(write(tmp_path, "name: x\ntrain:\n  head_epochs: 3\n"))
    assert config.name == "x"
    assert config.train.head_epochs == 3
    assert config.train.batch_size == ExperimentConfig().train.batch_size


def test_overrides_are_parsed_and_type_checked(tmp_path):
    config = load_config(write(tmp_path, "name: x\n"),
                         ["train.head_learning_rate=1e-2", "model.dropout=0.5",
                          "data.split_ratios=[0.8, 0.1, 0.1]", "model.weights=none"])
    assert config.train.head_learning_rate == 0.01
    assert config.model.dropout == 0.5
    assert config.data.split_ratios == (0.8, 0.1, 0.1)
    assert config.model.weights == "none"


def test_int_is_accepted_where_float_expected(tmp_path):
    assert load_config(None, ["train.decay_rate=1"]).train.decay_rate == 1.0


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.head_epoch'.*Did you mean 'train\.head_epochs'"):
        load_config(write(tmp_path, "train:\n  head_epoch: 3\n"))


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config key 'trian'.*'train'"):
        load_config(None, ["trian.head_epochs=3"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"'train\.batch_size' expects int\. Received: 'big'"):
        load_config(None, ["train.batch_size=big"])


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError, match="data.source' must be one of: fashion_mnist, folder"):
        load_config(None, ["data.source=s3"])


@pytest.mark.parametrize("key", sorted(choice_keys()))
def test_every_choice_key_accepts_its_choices_and_refuses_others(key):
    choices = choice_keys()[key]
    for choice in choices:
        section, name = key.split(".")
        assert getattr(getattr(load_config(None, [f"{key}={choice}"]), section), name) == choice
    with pytest.raises(ConfigError, match=f"'{key}' must be one of: {', '.join(choices)}"):
        load_config(None, [f"{key}=not_a_choice"])


@pytest.mark.parametrize("override, message", [
    ("model.dropout=1.5", "model.dropout' must be in"),
    ("train.batch_size=0", "train.batch_size' must be positive"),
    ("train.head_epochs=-1", "must not be negative"),
    ("data.split_ratios=[0.5, 0.5]", "split_ratios' must be three fractions"),
    ("name=a/b", "plain folder name"),
])
def test_out_of_range_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.batch_size"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed\n"))


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["train.head_epochs=7", "data.split_ratios=[0.6, 0.2, 0.2]"])
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config
    assert to_dict(config)["data"]["split_ratios"] == [0.6, 0.2, 0.2]


@pytest.mark.parametrize("name", ["default", "flowers", "folder"])
def test_shipped_configs_load(name):
    assert load_config(f"configs/{name}.yaml").name == name


def test_augmentation_chain_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="augment.chain.*HorizontalFlip"):
        load_config(None, ["augment.chain=[{name: HorizontalFlp, p: 0.5}]"])


def test_unknown_backbone_is_checked_when_the_config_loads():
    with pytest.raises(ConfigError, match="model.backbone.*resnet50"):
        load_config(None, ["model.backbone=resnet5"])


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "../elsewhere", "a\\b"])
def test_run_names_cannot_leave_the_runs_folder(name):
    with pytest.raises(ConfigError, match="'name' must be a plain folder name"):
        load_config(None, [f"name={name}"])
