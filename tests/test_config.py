import pytest

from skinscan.config import SynthConfig, TrainConfig, load_config, save_config
from skinscan.errors import ConfigError


def test_overrides_apply_and_nest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nmodel:\n  name: efficientnet_b0\n")
    cfg = load_config(TrainConfig, path, ["model.img_size=96", "lr=1e-3", "model.kwargs.depths=[1,1]"])
    assert (cfg.epochs, cfg.model.name, cfg.model.img_size, cfg.lr) == (3, "efficientnet_b0", 96, 1e-3)
    assert cfg.model.kwargs == {"depths": [1, 1]}


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("epochs=0", "config key epochs: Input should be greater than or equal to 1 (got 0)"),
        ("metric=f2", "config key metric: must be one of"),
        ("colour=red", "config key colour: unknown key"),
        ("model.img_size=abc", "config key model.img_size:"),
        ("epochs", "expected key=value"),
        ("augment.cutmix_alpha=1,task=segment", "config: augment.mixup_alpha / cutmix_alpha mix class labels"),
        ("augment.mixup_alpha=0.2,batch_size=7", "config: mixing pairs the images of a batch: batch_size must be even"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, None, override.split(","))
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(SynthConfig, None, ["n_images=7", "classes=[NV,MEL]"])
    path = save_config(cfg, tmp_path)
    assert load_config(SynthConfig, path) == cfg


def test_shipped_configs_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    from skinscan.config import CONFIG_KINDS

    files = sorted(root.rglob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        kind = f.relative_to(root).parts[0]
        assert kind in CONFIG_KINDS, f"{f}: no config model for folder {kind}"
        load_config(CONFIG_KINDS[kind], f)
