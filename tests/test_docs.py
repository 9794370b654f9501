"""The documentation stays true to the code: settings, routes, error codes and links.

docs/config.md must list every ``Config`` field (and nothing else), docs/api.md every route the
app serves (and nothing else) and every error code the API can answer; README.md and docs/
must link only to files that exist in this repository.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from vault.config import DEFAULT_CONTENT_TYPES, SECRET_SETTINGS, Config, load_config
from vault.errors import ImageVaultError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_MD = DOCS / "api.md"
CONFIG_MD = DOCS / "config.md"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Names in docs/config.md that are not fields but are real: the file the TOML comes from, and
# the file forms of the secrets.
NOT_FIELDS = {"IMAGEVAULT_CONFIG", "IMAGEVAULT_INDEX"} | {f"IMAGEVAULT_{name.upper()}_FILE" for name in SECRET_SETTINGS}  # INDEX: index_engine's fallback


def env_name(field: dataclasses.Field) -> str:
    return "IMAGEVAULT_" + field.name.upper()


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row (header and separator rows included)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            rows.append([cell.strip() for cell in line[1:-1].split("|")])
    return rows


def config_rows() -> dict[str, list[list[str]]]:
    """Table rows of docs/config.md whose first cell names an ``IMAGEVAULT_*`` variable."""
    rows: dict[str, list[list[str]]] = {}
    for cells in table_rows(CONFIG_MD.read_text()):
        names = re.findall(r"`(IMAGEVAULT_[A-Z0-9_]+)`", cells[0])
        if len(names) == 1 and cells[0] == f"`{names[0]}`":
            rows.setdefault(names[0], []).append(cells)
    return rows


# --- docs/config.md ----------------------------------------------------------------------

def test_every_config_field_is_documented_by_env_name_and_toml_key():
    text = CONFIG_MD.read_text()
    for field in dataclasses.fields(Config):
        assert env_name(field) in text, f"{env_name(field)} missing from docs/config.md"
        assert f"`{field.name}`" in text, f"TOML key `{field.name}` missing from docs/config.md"


def test_every_config_field_has_exactly_one_table_row_naming_env_and_toml_key():
    rows = config_rows()
    for field in dataclasses.fields(Config):
        found = rows.get(env_name(field), [])
        assert len(found) == 1, f"{env_name(field)}: {len(found)} table rows in docs/config.md"
        assert found[0][1] == f"`{field.name}`", f"{env_name(field)}: TOML key cell is {found[0][1]!r}"


def test_no_stale_imagevault_names_in_config_doc():
    known = {env_name(f) for f in dataclasses.fields(Config)} | NOT_FIELDS
    mentioned = set(re.findall(r"IMAGEVAULT_[A-Z0-9_]*[A-Z0-9]", CONFIG_MD.read_text()))
    stale = sorted(mentioned - known)
    assert not stale, f"names in docs/config.md that are not Config fields: {stale}"


def test_vault_fallback_variables_are_documented():
    text = CONFIG_MD.read_text()
    assert "`VAULT_ADDR`" in text and "`VAULT_TOKEN`" in text


def _documented_default(cell: str) -> object:
    """The default column: ``unset``, or a TOML literal in backticks, maybe followed by prose."""
    if cell == "unset":
        return None
    match = re.match(r"`([^`]+)`", cell)
    assert match, f"default cell {cell!r} is neither 'unset' nor a `literal`"
    return tomllib.loads(f"value = {match.group(1)}")["value"]


def test_documented_defaults_are_the_dataclass_defaults():
    rows = config_rows()
    defaults = Config()
    for field in dataclasses.fields(Config):
        actual = getattr(defaults, field.name)
        cell = rows[env_name(field)][0][3]
        if isinstance(actual, tuple):
            continue  # a list: checked item by item below
        documented = _documented_default(cell)
        if isinstance(actual, Path):
            documented = Path(documented)  # type: ignore[arg-type]
        assert documented == actual, f"{field.name}: documented default {cell!r}, actual {actual!r}"
        assert type(documented) is type(actual) or isinstance(actual, float), field.name


def test_default_content_types_are_listed_in_config_doc():
    text = CONFIG_MD.read_text()
    for content_type in DEFAULT_CONTENT_TYPES:
        assert f"`{content_type}`" in text


def test_config_doc_example_toml_is_accepted_by_the_loader(tmp_path):
    """The example file of docs/config.md parses and passes the loader's checks."""
    text = CONFIG_MD.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "no TOML example in docs/config.md"
    example = tmp_path / "imagevault.toml"
    example.write_text(blocks[0])
    config = load_config(config_file=example, environ={})
    assert config.medical_retention_by_tenant  # the table reached the field


# --- docs/api.md: routes -----------------------------------------------------------------

@pytest.fixture
def app_routes(tmp_path):
    """(method, canonical path) of every route, without the HEAD routes aiohttp adds to GETs."""
    from vault.api.app import create_app
    from vault.api.keys import VAULT

    app = create_app(load_config(data_dir=tmp_path, environ={}))
    # Building the app opens nothing: the service is opened by the app's startup, not here.
    assert VAULT not in app
    assert list(tmp_path.iterdir()) == []
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()}
    gets = {path for method, path in routes if method == "GET"}
    return {(m, p) for m, p in routes if not (m == "HEAD" and p in gets)}, gets


def documented_endpoints() -> set[tuple[str, str]]:
    """``METHOD /path`` pairs of the endpoint headings in docs/api.md."""
    found = set()
    heading = re.compile(r"^#{2,6}\s+(%s)\s+(/\S*)\s*$" % "|".join(METHODS))
    for line in API_MD.read_text().splitlines():
        match = heading.match(line.strip())
        if match:
            found.add((match.group(1), match.group(2)))
    return found


def test_every_served_route_has_an_endpoint_heading_in_api_doc(app_routes):
    routes, _ = app_routes
    missing = routes - documented_endpoints()
    assert not missing, f"routes without a '### METHOD /path' heading in docs/api.md: {sorted(missing)}"


def test_every_endpoint_heading_in_api_doc_is_a_served_route(app_routes):
    routes, gets = app_routes
    served = routes | {("HEAD", path) for path in gets}
    stale = documented_endpoints() - served
    assert not stale, f"docs/api.md documents endpoints the app does not serve: {sorted(stale)}"


def test_api_doc_lists_the_unauthenticated_paths_of_the_middleware():
    from vault.api.middleware import PUBLIC_PATHS

    section = API_MD.read_text().split("## Unauthenticated endpoints", 1)[1]
    for path in PUBLIC_PATHS:
        assert f"GET {path}" in section


# --- docs/api.md: errors -----------------------------------------------------------------

def error_classes() -> list[type[ImageVaultError]]:
    # Import the modules that define private subclasses, so the walk sees every class.
    import vault.api.app  # noqa: F401  (handlers)
    import vault.keys.transit  # noqa: F401

    found, todo = [], [ImageVaultError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def codes_emitted_directly() -> set[str]:
    """Codes written by handlers without an exception class: ``error_body("code", ...)``."""
    codes = set()
    for path in (ROOT / "vault").rglob("*.py"):
        codes.update(re.findall(r"error_body\(\s*[\"']([a-z_]+)[\"']", path.read_text()))
    return codes


def test_direct_error_codes_are_found_in_the_handlers():
    assert "not_ready" in codes_emitted_directly()


def test_every_error_code_appears_in_api_doc():
    text = API_MD.read_text()
    codes = {cls.code for cls in error_classes()} | codes_emitted_directly()
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert not missing, f"error codes missing from docs/api.md: {missing}"


def test_error_table_in_api_doc_gives_each_code_its_http_status():
    table = {}
    for cells in table_rows(API_MD.read_text()):
        if len(cells) >= 2 and re.fullmatch(r"`[a-z_]+`", cells[0]) and cells[1].isdigit():
            table[cells[0].strip("`")] = int(cells[1])
    for cls in error_classes():
        assert table.get(cls.code) == cls.status, f"{cls.__name__}: {cls.code} should be {cls.status}"
    for code in codes_emitted_directly():
        assert code in table, f"{code} missing from the error table"


# --- README.md and docs/: links ----------------------------------------------------------

def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_docs_do_not_refer_outside_the_repository(path):
    text = path.read_text()
    assert "../shared" not in text
    assert "shared/API.md" not in text and "shared/DESIGN.md" not in text


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_relative_markdown_links_resolve_to_repository_files(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # links in code are not links
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # absolute URL or an anchor in the same file
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{path.name}: {target} points outside the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_readme_and_design_link_the_api_and_config_docs():
    readme = (ROOT / "README.md").read_text()
    design = (DOCS / "design.md").read_text()
    for target in ("docs/api.md", "docs/config.md"):
        assert f"]({target})" in readme
    for target in ("api.md", "config.md"):
        assert f"]({target})" in design


def test_every_secret_setting_has_a_documented_file_form():
    """A field kept out of the repr is a credential: it must be loadable from a file (a systemd
    credential), and both forms must be documented."""
    hidden = {f.name for f in dataclasses.fields(Config) if not f.repr}
    assert hidden == set(SECRET_SETTINGS)
    text = CONFIG_MD.read_text()
    for name in SECRET_SETTINGS:
        assert f"`IMAGEVAULT_{name.upper()}_FILE`" in text and f"`{name}_file`" in text, name
