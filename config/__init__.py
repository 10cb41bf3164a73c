"""Settings and the default price catalog for creditgate."""

from config.catalog import Catalog, Price, load_catalog
from config.loading import SettingsError, load_settings
from config.settings import Settings

__all__ = ["Catalog", "Price", "Settings", "SettingsError", "load_catalog", "load_settings"]
