"""Settings and the default price catalog for creditgate."""

from config.catalog import Catalog, Price, load_catalog
from config.settings import Settings, SettingsError, load_settings

__all__ = ["Catalog", "Price", "Settings", "SettingsError", "load_catalog", "load_settings"]
