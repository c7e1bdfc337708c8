"""Law families and their fitting: numpy/scipy only (no Ray, no MLflow)."""
