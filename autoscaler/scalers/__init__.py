"""Scalers: one module per backend behind `Scaler`."""
