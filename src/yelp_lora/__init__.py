"""yelp-lora: LoRA fine-tuning of BERT for 5-level Yelp review sentiment, with a deployable adapter.

The label names are read from `yelp_lora.config` when first asked for, so that importing the
package (as every command does, `--help` included) loads nothing else.
"""

__version__ = "0.1.0"
__all__ = ["ID2LABEL", "LABEL2ID", "LABEL_NAMES", "NUM_LABELS", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from yelp_lora import config

        return getattr(config, name)
    raise AttributeError(f"module 'yelp_lora' has no attribute {name!r}")
