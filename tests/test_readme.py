"""The README stays true: every setting is documented, and the two commands are there."""

from pathlib import Path

from app.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [n for n in Settings.model_fields if f"DFSHIELD_{n.upper()}" not in README]
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_readme_gives_the_two_commands() -> None:
    assert "uv run dfshield serve" in README
    assert "uv run pytest" in README
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "uv run pytest" in ci
