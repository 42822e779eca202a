"""latprune benchmarks: each module measures one goal and writes results/<name>.json and .md."""
