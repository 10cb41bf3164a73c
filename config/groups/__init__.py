"""The groups of settings, one module each (proxy, payments, ...): plain pydantic models
whose fields and single-field checks :class:`config.settings.Settings` combines into
the one flat model. Nothing imports a group but ``config.settings``."""
