"""AURA's dataflow: engine-agnostic core modules plus thin Beam (and later Flink) adapters."""
