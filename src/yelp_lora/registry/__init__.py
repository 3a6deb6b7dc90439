"""The versioned adapter registry: verified versions (store), their manifests, model cards and merged exports."""
