"""The policy model: parsing, normalisation, narrowing, files and profiles."""
