from __future__ import annotations

import subprocess

from shared import provenance


def test_git_revision_is_the_projects_own_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command started outside the checkout (here: not a repository at all)
    expected = subprocess.run(
        ["git", "-C", str(provenance.PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, encoding="utf-8"
    )
    if expected.returncode == 0:
        assert provenance.git_revision() == expected.stdout.strip()
    subprocess.run(["git", "init", "-q", str(tmp_path / "other")], check=True)
    monkeypatch.chdir(tmp_path / "other")  # inside another repository: still not its revision
    if expected.returncode == 0:
        assert provenance.git_revision() == expected.stdout.strip()


def test_an_installed_copy_that_is_not_a_checkout_records_its_version(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)
    assert provenance.git_revision() == f"zeus-seg {provenance.package_version('zeus-seg')}"
