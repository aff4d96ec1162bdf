"""The SmolLM2-135M-Instruct demo model family and the replication study (``make experiment``)."""
