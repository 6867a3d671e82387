"""The Jinja templates of the Hub model cards the package renders (``hf_robust_distill.hub.card``).

This folder is installed as the package ``hf_robust_distill.model_cards`` (see pyproject.toml), so
wheels and editable installs carry the templates."""
