"""SafeGene server: vLLM's OpenAI server in-process, with safety-stacked task variants, auth, admin API and
safety metrics. The only package that imports vLLM (lazily, in ``server.engine``)."""
