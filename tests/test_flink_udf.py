"""Building the Flink job's Java functions from source (``pipelines.flink.udf``): the jar holds
the classes, the cache key follows the sources, and a missing javac is a clear error."""

from __future__ import annotations

import importlib.util
import os
import shutil
import zipfile

import pytest

from pipelines.flink import udf

if importlib.util.find_spec("pyflink") is None:
    pytest.skip("apache-flink is not installed (its jars are the classpath)", allow_module_level=True)


def test_the_cache_key_follows_the_sources(tmp_path, monkeypatch):
    src = tmp_path / "java"
    shutil.copytree(udf.SOURCE_DIR, src)
    monkeypatch.setattr(udf, "SOURCE_DIR", str(src))
    before = udf.source_hash()
    assert udf.source_hash() == before
    parser = src / "aura" / "flink" / "TelemetryParser.java"
    parser.write_text(parser.read_text() + "\n// changed\n")
    assert udf.source_hash() != before


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK")
def test_build_makes_a_jar_of_the_classes_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AURA_FLINK_UDF_CACHE", str(tmp_path / "cache"))
    jar = udf.jar_path()
    assert jar.startswith(str(tmp_path / "cache")) and udf.source_hash() in jar
    with zipfile.ZipFile(jar) as z:
        names = set(z.namelist())
    assert {"aura/flink/ParseLines.class", "aura/flink/TelemetryParser.class", "aura/flink/ParseMain.class",
            "aura/flink/LandingLines.class", "aura/flink/OrderedSplitAssigner$Provider.class"} <= names
    mtime = os.path.getmtime(jar)
    assert udf.jar_path() == jar and os.path.getmtime(jar) == mtime  # cached: not rebuilt


def test_a_missing_javac_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(udf.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="javac not found"):
        udf.build(str(tmp_path / "x.jar"))
