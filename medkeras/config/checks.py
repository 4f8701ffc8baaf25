"""`validate`: every section's checks, each beside the layer it concerns (`data/checks.py`, `models/checks.py`,
`evaluation/checks.py`, `train/checks.py`), run in one place before anything uses the config.

The layers import only the schema and its values (`schema.py`, `values.py`); this module, at the top, imports them.
"""

from __future__ import annotations

from medkeras.config.schema import Config


def validate(cfg: Config) -> None:
    """Checks that need more than a type: names that must exist, numbers in range, combinations that clash.
    Resolves `data.window` once into [[level, width], ...] (or null)."""
    from medkeras.data.checks import check_data
    from medkeras.evaluation.checks import check_eval
    from medkeras.models.checks import check_model
    from medkeras.train.checks import check_train

    check_model(cfg)
    check_data(cfg)
    check_train(cfg)
    check_eval(cfg)
