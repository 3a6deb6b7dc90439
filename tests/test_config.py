from pathlib import Path

import pytest

from yelp_lora.config import RunConfig, load_config
from yelp_lora.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_seed_preset_is_the_reference_config():
    config = load_config(REPO / "configs" / "seed.yaml")
    assert config.model.name_or_path == "bert-base-uncased"
    assert config.data.source == "yelp_review_full"
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (8, 16, 0.1)
    assert config.lora.target_modules == ["query", "value"] and config.lora.bias == "none"
    train = config.train
    assert (train.learning_rate, train.epochs, train.lr_scheduler) == (2e-4, 3, "linear")
    assert (train.train_batch_size, train.eval_batch_size, train.weight_decay) == (16, 16, 0.01)
    assert config.model.max_length == 256


def test_demo_preset_uses_the_packaged_model_and_local_data():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.model.name_or_path == "minilm"
    assert config.data.source == "auto"


# What the demo's tune study changed (docs/accuracy.md); configs/usual-way.yaml stays the previous
# demo config run the tutorials' way, as its speed and accuracy comparisons were measured.
TUNED = {"model.max_length", "model.truncation", "data.extra_train", "train.learning_rate", "train.warmup_ratio",
         "train.epochs", "train.label_smoothing", "train.ordinal_weight"}


def test_usual_way_preset_differs_from_the_demo_only_in_how_it_computes_and_what_the_study_tuned():
    demo, usual = (load_config(REPO / "configs" / name).model_dump() for name in ("demo.yaml", "usual-way.yaml"))
    changed = {
        f"{section}.{key}": value
        for section, values in usual.items()
        for key, value in values.items()
        if demo[section][key] != value and f"{section}.{key}" not in TUNED
    }
    assert changed == {
        "model.attention": "sdpa", "model.dropout_kernel": "torch", "train.precision": "fp32",
        "train.pad_to_max_length": True, "train.group_by_length": False,
    }


def test_overrides_apply_and_none_means_keep():
    config = load_config(REPO / "configs" / "seed.yaml", {"train.seed": 7, "train.epochs": None})
    assert config.train.seed == 7 and config.train.epochs == 3


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  learning_rat: 0.1\n", "train.learning_rat"),
        ("train:\n  epochs: -1\n", "train.epochs"),
        ("lora: [1, 2]\n", "lora"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("train: {seed: [\n", "not valid YAML"),
        # YAML would keep the last of two keys, and read `true` as 1 epoch: both refused, and where.
        ("train:\n  epochs: 2\n  seed: 1\n  epochs: 3\n", "not valid YAML: found the key 'epochs' twice at line 4, column 3"),
        ("train:\n  epochs: true\n", "train.epochs: a number is needed, not a boolean (got True)"),
        ("lora:\n  r: yes\n", "lora.r: a number is needed, not a boolean (got True)"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        load_config(path)
    assert fragment in str(err.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_defaults_are_valid():
    assert RunConfig().train.seed == 42


def test_set_overrides_any_field_and_names_unknown_ones():
    from yelp_lora.config import parse_set

    config = load_config(None, parse_set(["lora.r=16", "lora.target_modules=[query,key,value]", "train.learning_rate=1e-3"]))
    assert (config.lora.r, config.lora.target_modules, config.train.learning_rate) == (16, ["query", "key", "value"], 1e-3)
    with pytest.raises(ConfigError, match="unknown config field 'lora_r'"):
        load_config(None, parse_set(["lora_r=16"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set(["lora.r"])
    # null sets null (a preset's 5,000 rows -> every row); nothing after '=' and a key set twice are refused.
    seed = REPO / "configs" / "seed.yaml"
    assert load_config(seed).data.train_samples == 5000
    assert load_config(seed, parse_set(["data.train_samples=null"])).data.train_samples is None
    with pytest.raises(ConfigError, match=r"--set 'lora.r=': no value; give one, or null for none"):
        parse_set(["lora.r="])
    with pytest.raises(ConfigError, match="--set lora.r given twice: give it once"):
        parse_set(["lora.r=4", "lora.r=5"])
    with pytest.raises(ConfigError, match=r"^the command line: train.epochs: a number is needed, not a boolean"):
        load_config(seed, parse_set(["train.epochs=true"]))
    with pytest.raises(ConfigError, match=r"found the key 'r' twice at line 1, column 8\)$"):
        parse_set(["lora.target_modules={r: 1, r: 2}"])
    # A boolean field still reads YAML's booleans.
    assert load_config(seed, parse_set(["train.group_by_length=yes"])).train.group_by_length is True
    # A mistake on the command line is the command line's, not the preset's, and an unknown key lists the known ones.
    with pytest.raises(ConfigError, match=r"^the command line: lora.rank: no such field \(lora has r, alpha, dropout, "
                                          r"target_modules, bias\)$"):
        load_config(seed, parse_set(["lora.rank=16"]))


def test_command_settings_are_validated_when_built_and_frozen():
    from pydantic import ValidationError

    from yelp_lora.config import BenchSettings, EvalSettings, ServeSettings, build_settings

    with pytest.raises(ConfigError, match=r"--max-batch \(8\) must be at least --max-texts \(64\)"):
        build_settings(ServeSettings, max_batch=8)
    with pytest.raises(ConfigError, match=r"--n must be at least 1 \(got 0\)"):
        build_settings(EvalSettings, n=0)
    with pytest.raises(ConfigError, match="--model 'nope': expected minilm, bert-base or a model directory"):
        build_settings(BenchSettings, model="nope")
    settings = build_settings(ServeSettings, max_texts=8, max_batch=8)
    with pytest.raises(ValidationError):
        settings.max_texts = 9
    assert settings.max_body_bytes == 8 * (20_000 * 6 + 16) + 1024


def test_the_api_key_comes_from_the_environment_by_default(monkeypatch):
    from yelp_lora.config import ServeSettings

    monkeypatch.setenv("YELP_LORA_API_KEY", "from-env")
    assert ServeSettings().api_key == "from-env"
    assert ServeSettings(api_key="given").api_key == "given"
