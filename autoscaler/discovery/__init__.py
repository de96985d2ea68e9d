"""Pod discovery: one module per backend behind `Discovery`."""
