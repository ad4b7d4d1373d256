"""DSpark drafter: parallel block drafter with KV injection, Markov sequential head, confidence head,
and the DeepSpec checkpoint contract. Pure PyTorch; never imports sglang."""
from dspark_sglang.drafter.block import DraftBlock
from dspark_sglang.drafter.checkpoint import load_drafter, save_drafter
from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.drafter.context_cache import DraftContextCache
from dspark_sglang.drafter.contract import CheckpointContractError, check_checkpoint_contract
from dspark_sglang.drafter.model import DSparkDrafter

__all__ = ["DSparkDrafter", "DrafterConfig", "DraftBlock", "DraftContextCache", "CheckpointContractError",
           "check_checkpoint_contract", "load_drafter", "save_drafter"]
