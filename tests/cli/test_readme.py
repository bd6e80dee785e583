"""The README is the user's guide: its quickstart and config reference must stay true."""


from paths import ROOT

from ptq_core.config.reference import END, START, markdown_reference
from ptq_core.config.schema import SECTIONS

README = (ROOT / "README.md").read_text()


def test_quickstart_is_the_two_make_commands():
    assert "make demo" in README and "make test" in README


def test_config_reference_lists_every_section_and_key():
    for section in SECTIONS:
        assert f"[{section.name}]" in README
        for key in section.keys:
            assert f"`{key.name}`" in README, key.name


def test_config_reference_is_the_generated_one():
    block = README.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == markdown_reference().strip(), "run: python -m ptq_core.config.reference --write"
