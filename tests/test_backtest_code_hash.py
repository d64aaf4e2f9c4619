"""Cache keys follow the code they cover, and a pattern that matches nothing is an error."""

from __future__ import annotations

import pytest

from pipelines.backtest import code_hash as ch


def test_hash_changes_with_the_files_and_only_with_them(tmp_path, monkeypatch):
    monkeypatch.setattr(ch, "REPO", str(tmp_path))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.py").write_text("y = 2\n")
    (tmp_path / "other.py").write_text("z = 3\n")
    first = ch.code_hash("pkg/*.py")
    assert ch.code_hash("pkg/*.py") == first
    (tmp_path / "other.py").write_text("z = 4\n")  # not covered
    assert ch.code_hash("pkg/*.py") == first
    (tmp_path / "pkg" / "b.py").write_text("y = 3\n")
    assert ch.code_hash("pkg/*.py") != first
    assert ch.code_hash("pkg/*.py", "other.py") != ch.code_hash("pkg/*.py")
    with pytest.raises(FileNotFoundError, match="no source file matches 'gone.py'"):
        ch.code_hash("pkg/*.py", "gone.py")


def test_the_backtest_cache_keys_cover_existing_files():
    from pipelines.backtest.ablation import MODEL_CODE
    from pipelines.backtest.run import WINDOW_CODE

    assert len(ch.code_hash(*WINDOW_CODE)) == len(ch.code_hash(*MODEL_CODE)) == 64
