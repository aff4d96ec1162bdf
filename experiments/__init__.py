"""Experiments built on the SafeGene runtime (not imported by the runtime or the server)."""
