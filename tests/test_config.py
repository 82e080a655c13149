"""Config keys and values are checked in one place (utils.config_schema): a typo, a bad value or a
--set that cannot apply is one line naming the key, never a silent default."""

from __future__ import annotations

import pytest
from conftest import ROOT, write_config

import utils


def _error(config, overrides=()):
    with pytest.raises(utils.PipelineError) as e:
        utils.load_config(config, list(overrides))
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize(
    "item, message",
    [
        ("data.total_testng_files=5", "--set data.total_testng_files=5: unknown key data.total_testng_files "
         "(did you mean data.total_testing_files?)"),
        ("train.epochz=5", "--set train.epochz=5: unknown key train.epochz (did you mean train.epochs?)"),
        ("trian.epochs=5", "--set trian.epochs=5: unknown section [trian] (did you mean [train]?)"),
        ("train.lstm_units=8", "--set train.lstm_units=8: unknown key train.lstm_units "
         "(did you mean model.lstm_units?)"),
        ("data.snr_lower=1", "--set data.snr_lower=1: unknown key data.snr_lower "
         "(did you mean data.SNR_lower?)"),
        ("evaluate.model_dir=x", "--set evaluate.model_dir=x: unknown key evaluate.model_dir"),
        ("model.lstm_units=abc", "--set model.lstm_units=abc: expected an integer"),
        ("train.epochs=2.5", "--set train.epochs=2.5: expected an integer"),
        ("STFT.hop_size=-1", "--set STFT.hop_size=-1: must be > 0"),
        ("STFT.cache_noise=maybe", "--set STFT.cache_noise=maybe: expected true or false"),
        ("data.file_length=nan", "--set data.file_length=nan: expected a number"),
        ("enhance.chunk_seconds=abc", "--set enhance.chunk_seconds=abc: expected a number"),
        ("enhance.chunk_seconds=0", "--set enhance.chunk_seconds=0: must be > 0"),
        ("evaluate.workers=-2", "--set evaluate.workers=-2: must be >= 0"),
    ],
)  # fmt: skip
def test_bad_override_is_one_line(item, message):
    assert _error(utils.DEFAULT_CONFIG, [item]).startswith(message)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nepochz = 5\n", "unknown key train.epochz (did you mean train.epochs?)"),
        ("[trian]\nepochs = 5\n", "unknown section [trian] (did you mean [train]?)"),
        ("[data]\nfile_length = nan\n", "[data] file_length='nan': expected a number"),
        ("[STFT]\ncache_noise = maybe\n", "[STFT] cache_noise='maybe': expected true or false"),
        ("[enhance]\nchunk_seconds = 3O\n", "[enhance] chunk_seconds='3O': expected a number"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "c.ini"
    path.write_text(text)
    assert _error(path) == f"{path}: {message}"


def test_valid_configs_still_load(tmp_path):
    for path in (utils.DEFAULT_CONFIG, utils.DATA_CONFIG, ROOT / "pretrained" / "config.ini"):
        utils.load_config(path)
    # [data] keys in the main config (on-the-fly mixing) and the keys a run records are accepted
    cfg = utils.load_config(
        write_config(tmp_path, {"evaluate": {"model_dir": "x", "limit": ""}}),
        ["data.SNR_lower=-2.5", "train.init_weights=", "train.warmup_steps=10", "train.epochs=1e1"],
    )
    assert cfg.getfloat("data", "SNR_lower") == -2.5 and cfg.getint("train", "warmup_steps") == 10


def test_every_config_key_has_a_kind():
    schema = utils.config_schema()
    assert schema["train"]["cosine_steps"] == "int" and schema["data"]["file_length"] == "float"
    assert schema["STFT"]["cache_noise"] == "bool" and schema["paths"]["data_dir"] == "str"
    assert "total_testing_files" in schema["data"]


@pytest.mark.parametrize("script", ["enhance", "evaluate", "export"])
@pytest.mark.parametrize("item", ["model.lstm_units=abc", "STFT.hop_size=-1", "features.compression=0.5"])
def test_model_settings_cannot_be_overridden(tmp_path, script, item, capsys):
    module = __import__(script)
    out = tmp_path / "out"
    argv = {"enhance": [str(tmp_path / "x.wav"), "-o", str(out)], "evaluate": ["--out", str(out)],
            "export": ["--out", str(out)]}[script]  # fmt: skip
    rc = utils.run_main(module.main, [*argv, "--set", item])
    err = capsys.readouterr().err.strip().splitlines()
    section = item.split(".")[0]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --set {item}: {script}.py takes [{section}] from the model folder")
    assert not out.exists()


def test_on_the_fly_data_rate_must_equal_stft_rate(tmp_path):
    """[train] on_the_fly mixes at [STFT] sample_rate: a data config that says another rate is refused
    in one line naming both files; a --set data.sample_rate that agrees wins over the file."""
    import mixing

    data_config = tmp_path / "data_config.ini"
    text = utils.DATA_CONFIG.read_text()
    data_config.write_text(text.replace("sample_rate = 16000", "sample_rate = 22050"))
    config = write_config(tmp_path, {"train": {"data_config": str(data_config)}})
    with pytest.raises(utils.PipelineError) as e:
        mixing.data_settings(utils.load_config(config))
    assert str(e.value) == (
        f"{data_config}: [data] sample_rate=22050 differs from {config}: [STFT] sample_rate=16000; "
        "make them equal"
    )
    assert mixing.data_settings(utils.load_config(config, ["data.sample_rate=16000"]))["SNR_lower"] == "-5"


def test_config_value_is_typed_with_one_default(tmp_path):
    """utils.config_value: the one typed getter; a missing key is config.ini's default, a bad value one
    line naming the file, section.key and value; comma lists are tuples of their non-empty items."""
    cfg = utils.load_config(write_config(tmp_path), ["evaluate.oracles= irm,, psm ", "train.epochs=1e1"])
    assert utils.config_value(cfg, "evaluate", "oracles") == ("irm", "psm")
    assert utils.config_value(cfg, "train", "epochs") == 10
    cfg.remove_option("enhance", "chunk_seconds")  # a saved config that predates the key
    shipped = utils.config_default("enhance", "chunk_seconds")
    assert utils.config_value(cfg, "enhance", "chunk_seconds") == shipped
    assert utils.config_value(None, "evaluate", "metrics") == ("sdr", "si_sdr", "snr", "pesq", "stoi")
    cfg.set("model", "lstm_units", "many")
    with pytest.raises(utils.PipelineError) as e:
        utils.config_value(cfg, "model", "lstm_units")
    assert str(e.value) == f"{cfg.source}: [model] lstm_units='many': expected an integer"


def _params_classes():
    import model
    import spectral
    import train_settings

    return {"STFT": spectral.StftParams, "features": spectral.FeatureParams, "model": model.ModelParams,
            "train": train_settings.TrainParams}  # fmt: skip


@pytest.mark.parametrize("section", ["STFT", "features", "model", "train"])
def test_params_defaults_are_config_ini_defaults(section):
    """One default per key: each params dataclass's field defaults are config.ini's values, and a config
    without the section (one that predates it) gets the same (STFT keys must be stated: no default)."""
    import configparser

    cls = _params_classes()[section]
    assert cls.from_config(utils.load_config(utils.DEFAULT_CONFIG)) == cls()
    if section != "STFT":
        assert cls.from_config(configparser.ConfigParser()) == cls()


def test_loss_function_defaults_are_config_ini_defaults():
    import inspect

    import model

    defaults = {k: p.default for k, p in inspect.signature(model.compressed_loss).parameters.items()}
    shipped = {key: utils.config_default("loss", key) for key in ("power", "lam", "epsilon")}
    assert (defaults["power"], defaults["lam"], defaults["eps"]) == tuple(shipped.values())
