"""histo-bench models: a registry of name -> ``nn.Module`` builders for the multi-magnification literature.

Families, one file each: ``classifiers`` (timm backbones), ``fusion`` (multi-magnification fusion), ``mil``
(attention multiple-instance learning), ``mpcs`` (magnification-prior contrastive pretraining); ``weights`` loads
local weight files. Importing this package is light: it imports neither torch nor timm. Use::

    from models.registry import MODELS, build_model, model_table
"""
