from .vmoe import MobileVMoE, ModelOutput, MoEMlp

__all__ = ["MobileVMoE", "ModelOutput", "MoEMlp"]
