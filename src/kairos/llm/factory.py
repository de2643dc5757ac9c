"""The language model the settings ask for, or None when it is off."""

from __future__ import annotations

from kairos.config import Settings
from kairos.llm.backend import LanguageModel


def load_model(settings: Settings) -> LanguageModel | None:
    """Raises ModelUnavailable when the configured model cannot be loaded or configured."""
    if settings.llm == "off":
        return None
    if settings.llm == "openai":
        from kairos.llm.openai import OpenAICompatibleModel

        return OpenAICompatibleModel(settings.llm_base_url, settings.llm_model, settings.llm_api_key,
                                     settings.llm_timeout_s)
    from kairos.llm.adapters import AdapterRegistry
    from kairos.llm.local import LocalModel
    from kairos.store import shared_artefacts
    from kairos.training.pipeline import model_dir

    shared = shared_artefacts(settings.store_url)
    adapter = (AdapterRegistry(model_dir(settings) / "llm", shared=shared).current()
               if settings.llm_finetuned and settings.llm_path is None else None)
    return LocalModel(settings.llm_path, settings.llm_threads, adapter=adapter)
