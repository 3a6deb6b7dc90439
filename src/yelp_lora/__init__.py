"""yelp-lora: LoRA fine-tuning of BERT for 5-level Yelp review sentiment, with a deployable adapter."""

from yelp_lora.config import ID2LABEL, LABEL2ID, LABEL_NAMES, NUM_LABELS

__version__ = "0.1.0"
__all__ = ["ID2LABEL", "LABEL2ID", "LABEL_NAMES", "NUM_LABELS", "__version__"]
