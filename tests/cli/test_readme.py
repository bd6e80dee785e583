"""The README is the newcomer's guide and docs/config-reference.md the full key table: both stay true."""


from paths import ROOT

from ptq_core.config.reference import END, START, markdown_reference
from ptq_core.config.schema import SECTIONS

README = (ROOT / "README.md").read_text()
REFERENCE = (ROOT / "docs" / "config-reference.md").read_text()


def test_quickstart_is_the_two_make_commands():
    assert "make demo" in README and "make test" in README


def test_the_readme_is_short_and_links_every_docs_page_it_names():
    assert len(README.splitlines()) <= 300
    for page in ("config-reference", "modes", "departures", "hostile-inputs", "debug-reports", "flows", "operations",
                 "architecture"):
        assert f"docs/{page}.md" in README and (ROOT / "docs" / f"{page}.md").exists(), page


def test_config_reference_lists_every_section_and_key():
    for section in SECTIONS:
        assert f"[{section.name}]" in REFERENCE
        for key in section.keys:
            assert f"`{key.name}`" in REFERENCE, key.name


def test_config_reference_is_the_generated_one():
    block = REFERENCE.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == markdown_reference().strip(), "run: python -m ptq_core.config.reference --write"
