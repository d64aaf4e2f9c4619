"""The PyFlink adapter: Flink SQL parses and windows on the JVM, Python does per-window work."""
