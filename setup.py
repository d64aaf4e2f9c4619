"""AURA: early warning for cascading failures in fleets of agents.

The one place dependencies are pinned. apache-beam stays at 2.61.0 so that
apache-flink 2.3.0 installs beside it (see ../shared/DESIGN.md): protobuf < 6,
pandas < 2.3, pyarrow < 21.
"""

from setuptools import find_packages, setup

RUNTIME = [
    "apache-beam==2.61.0",
    "protobuf==5.29.6",
    "grpcio==1.65.5",
    "numpy==2.1.3",
    "pandas==2.2.3",
    "pyarrow==16.1.0",
    "scipy==1.17.1",
    "networkx==3.6.1",
    "fastjsonschema==2.22.3",
    "orjson==3.13.0",
    "great-expectations==1.24.1",
    "tqdm==4.70.1",
    # persistent homology (issue 3)
    "ripser==0.6.15",
    "giotto-ph==0.2.4",
    "scikit-learn==1.9.1",
    # joblib 1.6 needs cloudpickle>=3, Beam 2.61 needs cloudpickle~=2.2.1
    "joblib==1.5.2",
    "cloudpickle==2.2.1",
    # prediction at run time (issue 4)
    "onnxruntime==1.32.0",
    # Triton client without its extras: the grpc extra asks protobuf<5 and newer releases
    # import only with grpcio>=1.67, both against Beam 2.61's pins; 2.45.0 works with
    # grpcio 1.65 and protobuf 5 (tests/test_triton.py talks to a real server)
    "tritonclient==2.45.0",
    "geventhttpclient==2.0.2",
    "python-rapidjson==1.25",
    # graph sink (issue 5): the official driver; locally an embedded ArcadeDB Bolt server
    "neo4j==6.4.1",
    "arcadedb-embedded==26.10.2.post1",
    # the driver's PackStream in Rust, same version as the driver (issue 21): packing a
    # 100,000-agent window's parameters drops from ~0.4 s of CPU to ~0.03 s
    "neo4j-rust-ext==6.4.1.0",
    # consensus (issue 6): Ed25519 keys and signatures
    "cryptography==50.0.2",
    # backtest report (issue 7): plots embedded in report.html
    "matplotlib==3.11.2",
    # the Flink job (issue 8): PyFlink with its bundled jars (files, json, table); it pins
    # apache-beam <= 2.61, pandas < 2.3, pyarrow < 21, which the pins above satisfy
    "apache-flink==2.3.0",
    # the service (issue 16): FastAPI on uvicorn, OTLP in (opentelemetry-proto messages), metrics out;
    # the same OpenTelemetry SDK and exporter instrument the testbed's real agent processes, which
    # are LangGraph graphs; these versions resolve beside protobuf 5.29 / grpcio 1.65 (DESIGN.md)
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.4",
    "httpx==0.28.1",
    "prometheus-client==0.26.0",
    "opentelemetry-proto==1.45.2",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp==1.45.2",
    "langgraph==1.2.24",
    "langgraph-checkpoint==4.3.2",
    "langgraph-checkpoint-sqlite==3.1.2",
    "langchain-core==1.8.3",
]

# training and export only; never imported on the runtime path
TRAIN = [
    "torch==2.13.0",
    "ncps==1.0.1",
    "onnx==1.22.0",
]

TEST = [
    # the reference Wasserstein distance our own is checked against
    "persim==0.4.1",
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    # line coverage of pipelines/ and models/ in `make test`, subprocesses included ([tool.coverage])
    "pytest-cov==7.1.0",
    "coverage==7.17.3",
    "hypothesis==6.170.15",
    "fusepy==3.0.1",  # a slow disk for the fault tests (tests/slow_fs.py, FUSE via libfuse2)
    "jsonschema==4.26.0",
    "ruff==0.17.6",
    # Starlette 1.x's TestClient runs on httpx2
    "httpx2==2.16.2",
    # the dashboard tests drive a real headless Chromium over the DevTools protocol (tests/chromium.py)
    "websockets==17.4",
    # builds the Grafana dashboards as code (infra/grafana/build.py); the epoch is part of the version
    "grafana-foundation-sdk==1769699998!10.1.0",
    # reads and writes the sized Flink manifests (infra/flink/sizing.py); the Prometheus tests read rules
    "pyyaml==6.0.4",
]

setup(
    name="aura",
    version="0.1.0",
    description="Early warning for cascading failures in fleets of agents",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["pipelines", "pipelines.*", "schemas", "schemas.*",
                                    "models", "models.*"]),
    package_data={"schemas": ["*.json", "*.cypher", "*.md", "expectations/*.json"],
                  "pipelines": ["service/static/*"],
                  "models": ["cascade_cfc/*.onnx", "cascade_cfc/*.json", "cascade_cfc/*.pt"]},
    install_requires=RUNTIME,
    extras_require={"train": TRAIN, "test": TEST + TRAIN},
    entry_points={"console_scripts": ["aura=pipelines.cli:main"]},
)
