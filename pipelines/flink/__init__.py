"""The PyFlink adapter: the JVM reads, parses and windows (Java operators), Python does per-window work."""
