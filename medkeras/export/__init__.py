"""Export: TF Serving SavedModels and `predict` (see the export issue)."""
