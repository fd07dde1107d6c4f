"""`blogsite-operator render` and `crd` work without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from blogsite_operator import cli

ROOT = Path(__file__).resolve().parents[2]


def test_render_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["render", "-f", str(ROOT / "deploy/examples/blogsite.yaml")]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} >= {
        ("Deployment", "lethain-frontend"),
        ("Service", "lethain-daedalus"),
    }
    assert all(o["metadata"]["namespace"] == "default" for o in objects)


def test_render_reports_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "bad.yaml"
    site.write_text(
        "kind: BlogSite\nmetadata: {name: x}\n"
        "spec: {domains: [a.com], daedalus: {image: 'd:latest'}}\n",
        encoding="utf-8",
    )
    assert cli.main(["render", "-f", str(site)]) == 2
    assert "latest" in capsys.readouterr().err


def test_render_without_blogsite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "none.yaml"
    empty.write_text("kind: ConfigMap\n", encoding="utf-8")
    assert cli.main(["render", "-f", str(empty)]) == 2
    assert "no BlogSite" in capsys.readouterr().err


def test_crd_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "CustomResourceDefinition"
