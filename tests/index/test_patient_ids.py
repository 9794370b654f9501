"""Patient-id schemes without the service: normal forms, the NHS check digit, the settings."""

from __future__ import annotations

import pytest

from vault.config import ConfigError, load_config
from vault.errors import InvalidRequest
from vault.index import patient_ids
from vault.index.patient_ids import EXACT, LEGACY, NHS, normal_form, nhs_number_valid, parse_tenant_schemes
from vault.metadata import WHITE_SPACE, is_text


@pytest.mark.parametrize("number", [
    "9434765919",  # the NHS's own example
    "4010232137",
    "9876543210",  # 11 - (330 mod 11) = 11: check digit 0
    "0000000000",
])
def test_valid_nhs_numbers_pass_the_check_digit(number):
    assert nhs_number_valid(number)


@pytest.mark.parametrize("number", [
    "9434765918",  # wrong check digit
    "9434765910",
    "1234567890",  # 11 - (210 mod 11) = 10: no check digit makes it valid
    "1234567891",
    "943476591",  # nine digits
    "94347659190",  # eleven
    "943476591X",
    "\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19",  # full-width digits
    "\u0669\u0664\u0663\u0664\u0667\u0666\u0665\u0669\u0661\u0669",  # Arabic-Indic digits
    "",
])
def test_invalid_nhs_numbers_fail_the_check(number):
    assert not nhs_number_valid(number)


def test_nhs_scheme_ignores_spaces_and_hyphens_and_refuses_anything_else_without_echoing_it():
    for written in ("943 476 5919", "943-476-5919", " 9434765919 ", "943 - 476 - 5919", "9\u00a0434765919"):
        assert normal_form(NHS, written) == b"9434765919"
    for written in ("943.476.5919", "9434765918", "NHS 9434765919", "943\u2010476\u20105919"):
        with pytest.raises(InvalidRequest) as caught:
            normal_form(NHS, written)
        assert caught.value.field == "patient_id"  # type: ignore[attr-defined]
        assert "943" not in caught.value.message


def test_exact_scheme_only_composes_and_trims():
    assert normal_form(EXACT, "  AB-12\u3000") == b"AB-12"
    assert normal_form(EXACT, "Jose\u0301") == normal_form(EXACT, "Jos\u00e9")  # NFD and NFC: one id
    distinct = ["AB-12", "ab-12", "AB12", "AB 12", "A B-12", "ＡB-12"]
    assert len({normal_form(EXACT, x) for x in distinct}) == len(distinct)


def test_legacy_scheme_is_the_normalisation_of_existing_directories():
    # The bytes that data directories indexed before schemes existed hold HMACs of.
    assert normal_form(LEGACY, "943 476 5919") == normal_form(LEGACY, "943-476-5919") == b"9434765919"
    assert normal_form(LEGACY, "AB-12") == normal_form(LEGACY, "ab12") == b"ab12"
    assert normal_form(LEGACY, "Stra\u00dfe") == b"strasse"


def test_the_white_space_exact_trims_is_the_white_space_of_the_text_rule():
    # A patient id that passes the metadata text rule never has an empty exact normal form.
    for code in range(0x20, 0x30000):
        char = chr(code)
        if 0xD800 <= code < 0xE000 or code == 0x7F:
            continue
        assert (char in WHITE_SPACE) == (not is_text(char, 1)), hex(code)


def test_same_raw_id_ignores_only_composition_and_surrounding_white_space():
    assert patient_ids.same_raw_id(" Jose\u0301", "Jos\u00e9")
    assert not patient_ids.same_raw_id("943 476 5919", "943-476-5919")
    assert not patient_ids.same_raw_id("AB-12", "ab-12")


def test_tenant_schemes_are_parsed_from_text_or_a_table():
    assert parse_tenant_schemes("clinic-a=nhs, clinic-b = exact,") == {"clinic-a": "nhs", "clinic-b": "exact"}
    assert parse_tenant_schemes({"clinic-a": "legacy"}) == {"clinic-a": "legacy"}
    for bad in ("clinic-a", "clinic-a=NHS", "clinic-a=", "=nhs", "clinic-a=folded"):
        with pytest.raises(ValueError):
            parse_tenant_schemes(bad)
    with pytest.raises(ValueError):
        parse_tenant_schemes({"clinic-a": 1})


def test_configured_scheme_is_per_tenant_then_default_then_the_directory_default():
    configured = patient_ids.settings("nhs", "clinic-b=exact")
    assert configured.configured("clinic-a", LEGACY) == NHS
    assert configured.configured("clinic-b", LEGACY) == EXACT
    assert patient_ids.settings("", "").configured("clinic-a", LEGACY) == LEGACY


def test_scheme_settings_load_from_environment_and_toml(tmp_path):
    env = {"IMAGEVAULT_PATIENT_ID_SCHEME": "exact", "IMAGEVAULT_PATIENT_ID_SCHEME_BY_TENANT": "clinic-a=nhs"}
    config = load_config(environ=env)
    assert (config.patient_id_scheme, config.patient_id_scheme_by_tenant) == ("exact", "clinic-a=nhs")
    path = tmp_path / "imagevault.toml"
    path.write_text('patient_id_scheme = "legacy"\n\n[patient_id_scheme_by_tenant]\nclinic-a = "nhs"\nclinic-b = "exact"\n')
    config = load_config(config_file=path, environ={})
    assert config.patient_id_scheme == "legacy"
    assert parse_tenant_schemes(config.patient_id_scheme_by_tenant) == {"clinic-a": "nhs", "clinic-b": "exact"}
    assert load_config(environ={}).patient_id_scheme == ""  # the data directory decides


@pytest.mark.parametrize("name, value", [
    ("IMAGEVAULT_PATIENT_ID_SCHEME", "NHS"),
    ("IMAGEVAULT_PATIENT_ID_SCHEME", "folded"),
    ("IMAGEVAULT_PATIENT_ID_SCHEME_BY_TENANT", "clinic-a"),
    ("IMAGEVAULT_PATIENT_ID_SCHEME_BY_TENANT", "clinic-a=loose"),
])
def test_malformed_scheme_settings_stop_with_a_line_naming_the_setting(name, value):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={name: value})
    assert name.removeprefix("IMAGEVAULT_").lower() in str(caught.value)
