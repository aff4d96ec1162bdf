"""Session fixture that starts the real SafeGene server on loopback (owned by the server work; see server/)."""
