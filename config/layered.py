"""Where :class:`~config.settings.Settings` reads its values from, apart from the fields.

:func:`config.loading.load_settings` layers flags, environment and YAML file itself and
passes the result as init kwargs, with :data:`LAYERED` set: then the kwargs are all there
is. A direct ``Settings(...)`` lets its kwargs beat the environment.
"""

from __future__ import annotations

import contextvars

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

# Set by config.loading.load_settings, which layers flags, environment and file itself.
LAYERED: contextvars.ContextVar[bool] = contextvars.ContextVar("layered", default=False)


class LayeredSources:
    """A mixin for a ``BaseSettings`` (before it): read from its kwargs alone under
    :data:`LAYERED`, else kwargs over the environment (no dotenv, no secrets directory)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if LAYERED.get():
            return (init_settings,)
        return init_settings, env_settings
