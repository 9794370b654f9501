"""Secrets from files (``IMAGEVAULT_<NAME>_FILE``, TOML ``<name>_file``): what systemd
credentials need. One trailing newline goes, both forms at once is an error, an unreadable file
is a one-line configuration error."""

from __future__ import annotations

import pytest

from vault.config import SECRET_SETTINGS, ConfigError, load_config


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_each_secret_can_come_from_a_file(tmp_path, name):
    path = tmp_path / name
    path.write_text("s3cr3t with spaces  \n")
    config = load_config(environ={f"IMAGEVAULT_{name.upper()}_FILE": str(path)})
    assert getattr(config, name) == "s3cr3t with spaces  "
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize("content, value", [
    ("token", "token"), ("token\n", "token"), ("token\r\n", "token"), ("token\n\n", "token\n"), ("", ""),
    ("two\nlines", "two\nlines"),
])
def test_exactly_one_trailing_newline_is_removed(tmp_path, content, value):
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    assert load_config(environ={"IMAGEVAULT_VAULT_TOKEN_FILE": str(path)}).vault_token == value


def test_value_and_file_together_are_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_text("a")
    with pytest.raises(ConfigError, match="IMAGEVAULT_S3_SECRET_KEY and IMAGEVAULT_S3_SECRET_KEY_FILE are both set"):
        load_config(environ={"IMAGEVAULT_S3_SECRET_KEY": "b", "IMAGEVAULT_S3_SECRET_KEY_FILE": str(path)})
    toml = tmp_path / "imagevault.toml"
    toml.write_text(f'vault_token = "x"\nvault_token_file = "{path}"\n')
    with pytest.raises(ConfigError, match="vault_token and vault_token_file are both set"):
        load_config(config_file=toml, environ={})


def test_unreadable_files_are_one_line_errors_naming_the_setting(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        load_config(environ={"IMAGEVAULT_VAULT_SECRET_ID_FILE": str(missing)})
    assert str(info.value) == f"cannot read {missing} (IMAGEVAULT_VAULT_SECRET_ID_FILE): No such file or directory"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="IMAGEVAULT_VAULT_TOKEN_FILE"):
        load_config(environ={"IMAGEVAULT_VAULT_TOKEN_FILE": str(binary)})
    with pytest.raises(ConfigError, match=r"\(IMAGEVAULT_KEYRING_PASSPHRASE_FILE\)"):
        load_config(environ={"IMAGEVAULT_KEYRING_PASSPHRASE_FILE": str(tmp_path)})  # a directory


def test_sources_keep_their_order_with_file_forms(tmp_path):
    """Environment (either form) over TOML (either form); a file also wins over VAULT_TOKEN."""
    env_file, toml_file = tmp_path / "env", tmp_path / "toml"
    env_file.write_text("from-env-file")
    toml_file.write_text("from-toml-file")
    toml = tmp_path / "imagevault.toml"
    toml.write_text(f'vault_token_file = "{toml_file}"\ns3_secret_key = "from-toml"\n')
    config = load_config(config_file=toml, environ={"IMAGEVAULT_S3_SECRET_KEY_FILE": str(env_file)})
    assert config.vault_token == "from-toml-file" and config.s3_secret_key == "from-env-file"
    config = load_config(config_file=toml, environ={"IMAGEVAULT_VAULT_TOKEN": "from-env"})
    assert config.vault_token == "from-env"
    config = load_config(environ={"IMAGEVAULT_VAULT_TOKEN_FILE": str(env_file), "VAULT_TOKEN": "fallback"})
    assert config.vault_token == "from-env-file"


def test_file_forms_exist_only_for_secrets(tmp_path):
    toml = tmp_path / "imagevault.toml"
    toml.write_text('listen_file = "/x"\n')
    with pytest.raises(ConfigError, match="unknown configuration key 'listen_file'"):
        load_config(config_file=toml, environ={})
