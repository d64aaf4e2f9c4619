"""Apache Beam adapter: wires the core modules into Beam windows, triggers and I/O."""
