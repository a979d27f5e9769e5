"""Code shared by both stages: manifests, readers, geometry, preprocessing, case cache, splits, CLI."""
