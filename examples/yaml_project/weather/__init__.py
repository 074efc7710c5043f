"""weather: a Conflux project whose datasets are declared in YAML."""
