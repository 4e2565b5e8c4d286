"""`pyunionfs-layer`: reading, diffing, exporting and importing layer directories (no mount needed)."""
