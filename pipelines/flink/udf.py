"""The Flink job's Java functions (``pipelines/flink/java``): built from source with javac into
a jar cached by source hash, then added to the job with ``pipeline.jars``.

No Flink import here (the pytest process must never import pyflink): the classpath is
PyFlink's ``lib/`` directory, found without importing the package. The jar is built at first
use (a few seconds) or ahead with ``python -m pipelines.flink.udf`` (Makefile, Dockerfile).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "java")
JAR_NAME = "aura-flink-udf.jar"
JAVA_RELEASE = "11"
PARSE_MAIN = "aura.flink.ParseMain"


def flink_lib() -> str:
    """PyFlink's ``lib/`` directory (its jars are the compile and run classpath)."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("apache-flink is not installed: the Flink job's Java functions need its jars")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def classpath() -> list[str]:
    """Compile classpath: flink-dist (DataStream API, shaded Jackson, Row) and the file connector."""
    lib = flink_lib()
    jars = [p for pat in ("flink-dist-*.jar", "flink-connector-files-*.jar")
            for p in sorted(glob.glob(os.path.join(lib, pat)))]
    if len(jars) < 2:
        raise RuntimeError(f"flink-dist / flink-connector-files jars not found in {lib}")
    return jars


def sources() -> list[str]:
    return sorted(glob.glob(os.path.join(SOURCE_DIR, "**", "*.java"), recursive=True))


def source_hash() -> str:
    """Hash of the Java sources, the target release and the Flink jars compiled against."""
    h = hashlib.sha256(JAVA_RELEASE.encode())
    for p in sources():
        h.update(os.path.relpath(p, SOURCE_DIR).encode() + b"\0")
        with open(p, "rb") as fh:
            h.update(fh.read())
    for j in classpath():
        h.update(os.path.basename(j).encode())
    return h.hexdigest()[:16]


def cache_dir() -> str:
    return os.environ.get("AURA_FLINK_UDF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aura", "flink-udf")


def build(out: str) -> str:
    """Compile the sources into the jar ``out`` (atomically); returns ``out``."""
    javac = shutil.which("javac")
    if javac is None:
        raise RuntimeError("javac not found: the Flink job's Java functions are built from "
                           f"{SOURCE_DIR} with a JDK 11+ (apt-get install openjdk-17-jdk-headless)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aura-udf-") as tmp:
        classes = os.path.join(tmp, "classes")
        cmd = [javac, "--release", JAVA_RELEASE, "-nowarn", "-encoding", "UTF-8",
               "-cp", os.pathsep.join(classpath()), "-d", classes, *sources()]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"javac failed ({done.returncode}):\n{done.stderr}")
        tmp_jar = os.path.join(os.path.dirname(out), f".{os.getpid()}.{JAR_NAME}")
        with zipfile.ZipFile(tmp_jar, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: pipelines.flink.udf\n\n")
            for p in sorted(glob.glob(os.path.join(classes, "**", "*.class"), recursive=True)):
                z.write(p, os.path.relpath(p, classes))
        os.replace(tmp_jar, out)
    return out


def jar_path() -> str:
    """The jar of the current sources, built if the cache does not have it."""
    out = os.path.join(cache_dir(), source_hash(), JAR_NAME)
    return out if os.path.exists(out) else build(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.flink.udf [OUT.jar]``: build (or find) the jar and print its path."""
    argv = sys.argv[1:] if argv is None else argv
    print(build(os.path.abspath(argv[0])) if argv else jar_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
