"""mvmoe: Mobile Vision Mixture-of-Experts, trained and shipped to phones."""

from .config import ModelConfig, parse_overrides
from .models import MobileVMoE, ModelOutput
from .models.registry import create_model, dense_twin, get_config, list_models

__version__ = "0.1.0"
__all__ = ["ModelConfig", "MobileVMoE", "ModelOutput", "create_model", "dense_twin", "get_config",
           "list_models", "parse_overrides", "__version__"]
